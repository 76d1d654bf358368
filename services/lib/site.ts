/**
 * The JetStream state of a site, created idempotently by whichever service starts first:
 * the data buckets, their `_meta` buckets, the op streams (OUT: own ops, IN: ingress + peers'
 * OUT sourced across domains) and the dead-letter stream.
 */
import {
  DiscardPolicy,
  type JetStreamClient,
  type JetStreamManager,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
  type StreamSource,
  jetstream,
  jetstreamManager,
} from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import type { Config } from "./config.ts";
import type { Logger } from "./logger.ts";
import {
  OPS_INGRESS,
  Streams,
  conflictsSubject,
  dlqSubject,
  journalSubject,
  metaBucket,
  opsSubject,
} from "./subjects.ts";

/** Handles a service uses on its site. */
export type SiteHandles = {
  js: JetStreamClient;
  jsm: JetStreamManager;
  kvm: Kvm;
  /** data bucket name → its KV */
  buckets: Map<string, KV>;
  /** data bucket name → its `_meta` KV */
  metas: Map<string, KV>;
  /** data bucket name → max value size in bytes (-1: unlimited) */
  maxValueSize: Map<string, number>;
};

const NANOS_PER_MS = 1_000_000;

/** True for JetStream's "stream/consumer not found" errors. */
export function isNotFound(err: unknown): boolean {
  const m = String((err as Error)?.message ?? err);
  return /not found|does not exist|10059/i.test(m);
}

/** Open a KV bucket, creating it when it does not exist yet. */
export async function openOrCreateKv(
  kvm: Kvm,
  name: string,
  log: Logger,
  opts: { history: number },
): Promise<KV> {
  try {
    const kv = await kvm.open(name);
    await kv.status();
    return kv;
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  log.info({ bucket: name }, "creating KV bucket");
  return kvm.create(name, { history: opts.history });
}

async function ensureStream(
  jsm: JetStreamManager,
  cfg: Partial<StreamConfig> & { name: string },
): Promise<void> {
  try {
    const info = await jsm.streams.info(cfg.name);
    const missing = (cfg.subjects ?? []).filter((s) => !info.config.subjects?.includes(s));
    if (missing.length > 0) {
      await jsm.streams.update(cfg.name, {
        ...info.config,
        subjects: [...(info.config.subjects ?? []), ...missing],
      });
    }
    return;
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  try {
    await jsm.streams.add(cfg);
  } catch (err) {
    // another instance created it in between: fine
    if (!/already in use/i.test(String((err as Error).message))) throw err;
  }
}

/** Open (creating when missing) everything the site's services share. */
export async function openSite(nc: NatsConnection, config: Config, log: Logger): Promise<SiteHandles> {
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const kvm = new Kvm(js);
  const buckets = new Map<string, KV>();
  const metas = new Map<string, KV>();
  const maxValueSize = new Map<string, number>();
  for (const b of config.buckets) {
    const kv = await openOrCreateKv(kvm, b, log, { history: 1 });
    buckets.set(b, kv);
    const st = await kv.status();
    maxValueSize.set(b, st.maxValueSize);
    metas.set(b, await openOrCreateKv(kvm, metaBucket(b), log, { history: 1 }));
  }
  const maxAge = config.limits.opsMaxAgeMs * NANOS_PER_MS;
  await ensureStream(jsm, {
    name: Streams.out(config.site),
    subjects: [opsSubject(config.site)],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    max_age: maxAge,
    duplicate_window: 2 * 60 * 1000 * NANOS_PER_MS,
  });
  await ensureStream(jsm, {
    name: Streams.in(config.site),
    subjects: [OPS_INGRESS, journalSubject(config.site)],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    max_age: maxAge,
  });
  await ensureStream(jsm, {
    name: Streams.dlq(config.site),
    subjects: [dlqSubject(config.site)],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    max_msgs: config.limits.dlqMaxMsgs,
    max_bytes: 64 * 1024 * 1024,
    discard: DiscardPolicy.Old,
  });
  await ensureStream(jsm, {
    name: Streams.conflicts(config.site),
    subjects: [conflictsSubject(config.site)],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    max_msgs: config.limits.conflictsMaxMsgs,
    max_age: config.limits.conflictsMaxAgeMs * NANOS_PER_MS,
    max_bytes: 256 * 1024 * 1024,
    discard: DiscardPolicy.Old,
  });
  return { js, jsm, kvm, buckets, metas, maxValueSize };
}

/** The source entry by which a site's IN stream takes a peer's own ops across domains. */
export function peerSource(peerSite: string, peerDomain: string): StreamSource {
  return {
    name: Streams.out(peerSite),
    filter_subject: opsSubject(peerSite),
    external: { api: `$JS.${peerDomain}.API`, deliver: "" },
  };
}

/**
 * Make the site's IN stream source every given peer (adds only; never removes a source, so a
 * partitioned peer keeps its place and catches up after the heal). Returns the peers added.
 */
export async function ensurePeerSources(
  jsm: JetStreamManager,
  site: string,
  peers: { site: string; domain: string }[],
): Promise<string[]> {
  const info = await jsm.streams.info(Streams.in(site));
  const have = new Set((info.config.sources ?? []).map((s) => s.name));
  const add = peers.filter((p) => p.site !== site && !have.has(Streams.out(p.site)));
  if (add.length === 0) return [];
  const cfg = {
    ...info.config,
    sources: [...(info.config.sources ?? []), ...add.map((p) => peerSource(p.site, p.domain))],
  };
  await jsm.streams.update(cfg.name, cfg);
  return add.map((p) => p.site);
}
