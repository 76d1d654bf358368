/**
 * The JetStream state of a site and of the hub (DESIGN §5, hub-and-spoke). Each service ensures what
 * feeds it: `openSite` the buckets and the streams every service writes to (DLQ, conflicts); the
 * merger its ingress and its inbound stream (which sources the hub's aggregate); the watcher the
 * site's outbound stream and its place among the aggregate's sources.
 *
 * Stream configs are ensured on every start: a stream that is missing is created, a stream whose
 * limits differ from the configured ones is updated, and when the server refuses that update the
 * service refuses to start with a message naming the stream, the fields and the server's reason.
 */
import {
  DiscardPolicy,
  type JetStreamClient,
  type JetStreamManager,
  type JetStreamOptions,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
  type StreamInfo,
  type StreamSource,
  type StreamSourceInfo,
  jetstream,
  jetstreamManager,
} from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import type { Config } from "./config.ts";
import { type StoreUsage, streamUsage } from "./health.ts";
import { isAlreadyExists, isInsufficientResources, isNoMessageFound, isStreamNotFound } from "./jserrors.ts";
import type { Logger } from "./logger.ts";
import { versionOfStreamConfig } from "./rearm.ts";
import {
  Durables,
  OPS_INGRESS,
  Streams,
  conflictsSubject,
  dlqSubject,
  journalSubject,
  kvStream,
  metaBucket,
  opsFilter,
  sourceSeqOf,
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
  /** replicas of everything the services create at this site */
  replicas: number;
};

const NANOS_PER_MS = 1_000_000;
const MiB = 1024 * 1024;

/**
 * Default byte limits when the configuration says 0 ("derive"): a share of the account's storage
 * limit when the account has one, else these figures, halved until the server's store can reserve
 * them (a stream's max_bytes is reserved against the server's `max_file_store`).
 */
export const ByteBudget = {
  /** share of the account's max_storage per op stream (OUT, IN) and for the hub's aggregate */
  opsShare: 1 / 8,
  hubShare: 1 / 2,
  /** without an account limit */
  opsDefault: 128 * MiB,
  hubDefault: 1024 * MiB,
  ingress: 64 * MiB,
  dlq: 64 * MiB,
  conflicts: 128 * MiB,
  /** never below this */
  floor: 1 * MiB,
} as const;

/** The account's storage limit in bytes, or 0 when it has none (dynamic limits: the server's store). */
export async function accountStorageLimit(jsm: JetStreamManager): Promise<number> {
  try {
    const ai = await jsm.getAccountInfo();
    return ai.limits.max_storage > 0 ? ai.limits.max_storage : 0;
  } catch {
    return 0;
  }
}

/**
 * Open a KV bucket, creating it (history 1 and 1 replica unless told) when its stream does not exist;
 * any other error (hub unreachable, no permission) is thrown, never answered by a create.
 */
export async function openOrCreateKv(
  kvm: Kvm,
  name: string,
  opts: { history?: number; replicas?: number; log?: Logger } = {},
): Promise<KV> {
  try {
    const kv = await kvm.open(name);
    await kv.status();
    return kv;
  } catch (err) {
    if (!isStreamNotFound(err)) throw err;
  }
  const replicas = opts.replicas ?? 1;
  opts.log?.info({ bucket: name, replicas }, "creating KV bucket");
  return kvm.create(name, { history: opts.history ?? 1, replicas });
}

/** A stream as a service wants it; `fitBytes`: max_bytes is a default that may shrink to fit the store. */
export type StreamWant = Partial<StreamConfig> & { name: string };

/** The fields a service owns in the streams it ensures (everything else is left as found). */
const OWNED: (keyof StreamConfig)[] = [
  "subjects",
  "max_age",
  "max_bytes",
  "max_msgs",
  "max_msgs_per_subject",
  "discard",
  "num_replicas",
  "duplicate_window",
];

function same(a: unknown, b: unknown): boolean {
  if (Array.isArray(a) && Array.isArray(b))
    return [...a].sort().join("\u0000") === [...b].sort().join("\u0000");
  return a === b;
}

/** Thrown when a stream's config differs and the server refuses the update: the service must not start. */
export class StreamDriftError extends Error {}

/** The sources a stream should have: the wanted ones added, an existing one given the wanted start; others kept. */
function withSources(
  have: StreamSource[] | undefined,
  want: StreamSource[] | undefined,
): StreamSource[] | undefined {
  if (!want) return have;
  const wanted = new Map(want.map((s) => [s.name, s]));
  let changed = false;
  const kept = (have ?? []).map((s) => {
    const w = wanted.get(s.name);
    if (!w || s.opt_start_seq === w.opt_start_seq) return s;
    changed = true;
    return { ...s, opt_start_seq: w.opt_start_seq };
  });
  const names = new Set(kept.map((s) => s.name));
  const add = want.filter((s) => !names.has(s.name));
  return add.length === 0 && !changed ? have : [...kept, ...add];
}

/**
 * Create the stream, or bring the fields it owns to the wanted values (sources: adds the wanted
 * ones, keeps others). With `fitBytes`, max_bytes is halved while the server cannot reserve it.
 */
export async function ensureStream(
  jsm: JetStreamManager,
  want: StreamWant,
  log: Logger,
  opts: { fitBytes?: boolean } = {},
): Promise<StreamInfo> {
  let cfg = { ...want };
  for (;;) {
    try {
      return await ensureStreamOnce(jsm, cfg, log);
    } catch (err) {
      const bytes = cfg.max_bytes ?? -1;
      if (opts.fitBytes && isInsufficientResources(err) && bytes / 2 >= ByteBudget.floor) {
        log.warn(
          { stream: cfg.name, max_bytes: bytes, next: Math.floor(bytes / 2) },
          "the server's store cannot reserve this stream's byte limit; halving it",
        );
        cfg = { ...cfg, max_bytes: Math.floor(bytes / 2) };
        continue;
      }
      throw err;
    }
  }
}

async function ensureStreamOnce(jsm: JetStreamManager, want: StreamWant, log: Logger): Promise<StreamInfo> {
  let info: StreamInfo | null = null;
  try {
    info = await jsm.streams.info(want.name);
  } catch (err) {
    if (!isStreamNotFound(err)) throw err;
  }
  if (!info) {
    try {
      log.info({ stream: want.name, replicas: want.num_replicas ?? 1 }, "creating stream");
      return await jsm.streams.add(want);
    } catch (err) {
      // another instance created it in between: check that one
      if (!isAlreadyExists(err)) throw err;
      info = await jsm.streams.info(want.name);
    }
  }
  const have = info.config;
  const drift = OWNED.filter((f) => f in want && !same(have[f], want[f]));
  const sources = withSources(have.sources, want.sources);
  if (drift.length === 0 && sources === have.sources) return info;
  const changes = Object.fromEntries(drift.map((f) => [f, { have: have[f], want: want[f] }]));
  const next = {
    ...have,
    ...Object.fromEntries(drift.map((f) => [f, want[f]])),
    ...(sources ? { sources } : {}),
  };
  try {
    const updated = await jsm.streams.update(want.name, next);
    log.warn({ stream: want.name, changes, sources: sources?.map((s) => s.name) }, "stream config updated");
    return updated;
  } catch (err) {
    if (isInsufficientResources(err)) throw err;
    throw new StreamDriftError(
      `stream ${want.name}: its config differs from the configured one (${JSON.stringify(changes)}) and the server refused the update (${(err as Error).message}); change or remove the stream by hand, or configure the values it has`,
      { cause: err },
    );
  }
}

/** The replicas the services use at a site: the setting, else those of the first data bucket. */
async function siteReplicas(kvm: Kvm, config: Config): Promise<number> {
  if (config.replicas > 0) return config.replicas;
  try {
    const kv = await kvm.open(config.buckets[0]!);
    return (await kv.status()).replicas || 1;
  } catch {
    return 1;
  }
}

/** Open (creating when missing) the buckets and the streams every service writes to. */
export async function openSite(nc: NatsConnection, config: Config, log: Logger): Promise<SiteHandles> {
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const kvm = new Kvm(js);
  const replicas = await siteReplicas(kvm, config);
  const buckets = new Map<string, KV>();
  const metas = new Map<string, KV>();
  const maxValueSize = new Map<string, number>();
  for (const b of config.buckets) {
    const kv = await openOrCreateKv(kvm, b, { replicas, log });
    buckets.set(b, kv);
    const st = await kv.status();
    maxValueSize.set(b, st.maxValueSize);
    metas.set(b, await openOrCreateKv(kvm, metaBucket(b), { replicas, log }));
  }
  await ensureStream(
    jsm,
    {
      name: Streams.dlq(config.site),
      subjects: [dlqSubject(config.site)],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      max_msgs: config.limits.dlqMaxMsgs,
      max_bytes: ByteBudget.dlq,
      discard: DiscardPolicy.Old,
      num_replicas: replicas,
    },
    log,
    { fitBytes: true },
  );
  await ensureStream(
    jsm,
    {
      name: Streams.conflicts(config.site),
      subjects: [conflictsSubject(config.site)],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      max_msgs: config.limits.conflictsMaxMsgs,
      max_age: config.limits.conflictsMaxAgeMs * NANOS_PER_MS,
      max_bytes: ByteBudget.conflicts,
      discard: DiscardPolicy.Old,
      num_replicas: replicas,
    },
    log,
    { fitBytes: true },
  );
  return { js, jsm, kvm, buckets, metas, maxValueSize, replicas };
}

/** The byte limit of a site's op stream: the setting, else a share of the account's limit or the default. */
async function opsBytes(jsm: JetStreamManager, config: Config): Promise<{ bytes: number; fit: boolean }> {
  if (config.limits.opsMaxBytes > 0) return { bytes: config.limits.opsMaxBytes, fit: false };
  const acct = await accountStorageLimit(jsm);
  return { bytes: acct > 0 ? Math.floor(acct * ByteBudget.opsShare) : ByteBudget.opsDefault, fit: true };
}

/** The config every compacted op log shares: one message per subject (= per key and origin), oldest key dropped when full. */
function opLog(name: string, bytes: number, replicas: number): StreamWant {
  return {
    name,
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    max_msgs_per_subject: 1,
    max_age: 0,
    max_bytes: bytes,
    discard: DiscardPolicy.Old,
    num_replicas: replicas,
  };
}

/** The site's outbound op log (owned by the watcher): own ops, one per key, what the hub sources. */
export async function ensureOutStream(
  jsm: JetStreamManager,
  config: Config,
  replicas: number,
  log: Logger,
): Promise<StreamInfo> {
  const b = await opsBytes(jsm, config);
  return ensureStream(
    jsm,
    {
      ...opLog(Streams.out(config.site), b.bytes, replicas),
      subjects: [opsFilter(config.site)],
      duplicate_window: 2 * 60 * 1000 * NANOS_PER_MS,
    },
    log,
    { fitBytes: b.fit },
  );
}

/**
 * Where the sources below start when their stream holds nothing from the origin. Without it, when
 * the server sets a source up in that state (a site registered again after its entry was dropped, a
 * new site whose log already holds ops, a purged FEED) and the stream's first sequence is past 1
 * (it compacted), nats-server 2.10+ starts the source at the stream's last message *time*, skipping
 * every op of the origin stored before it (server/stream.go, trySetupSourceConsumer). With it the
 * source copies the origin from its start; once the stream holds messages from the origin, the
 * server resumes after the last of them whatever this says.
 */
const SOURCE_START = { opt_start_seq: 1 } as const;

/** The source by which a site's inbound stream takes the hub's aggregate. */
export function hubSource(hubDomain: string): StreamSource {
  return { name: Streams.hub, ...SOURCE_START, external: { api: `$JS.${hubDomain}.API`, deliver: "" } };
}

/** The source by which the hub's aggregate takes a site's outbound op log. */
export function siteSource(site: string, domain: string): StreamSource {
  return { name: Streams.out(site), ...SOURCE_START, external: { api: `$JS.${domain}.API`, deliver: "" } };
}

/**
 * The merger's streams: the inbound op log (sources the hub's aggregate once; compacted per key and
 * origin) and the ingress (hand-made ops and the merge endpoint's journal, bounded by age and bytes:
 * every op in it is forwarded or applied within moments).
 */
export async function ensureMergerStreams(
  jsm: JetStreamManager,
  config: Config,
  replicas: number,
  log: Logger,
): Promise<void> {
  const b = await opsBytes(jsm, config);
  await ensureStream(
    jsm,
    { ...opLog(Streams.in(config.site), b.bytes, replicas), sources: [hubSource(config.hubDomain)] },
    log,
    { fitBytes: b.fit },
  );
  await ensureStream(
    jsm,
    {
      name: Streams.ingress(config.site),
      subjects: [OPS_INGRESS, journalSubject(config.site)],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      max_age: config.limits.opsMaxAgeMs * NANOS_PER_MS,
      duplicate_window: Math.min(2 * 60 * 1000, config.limits.opsMaxAgeMs) * NANOS_PER_MS,
      max_bytes: ByteBudget.ingress,
      discard: DiscardPolicy.Old,
      num_replicas: replicas,
    },
    log,
    { fitBytes: true },
  );
}

/** The hub's JetStream manager (throws while the hub is unreachable). */
export async function hubManager(nc: NatsConnection, hubDomain: string): Promise<JetStreamManager> {
  return jetstreamManager(nc, { domain: hubDomain, timeout: 5000 });
}

/**
 * The origin sequence named by a stream's message (its `Nats-Stream-Source` header): the message at
 * `seq`, or the last one on subject `subj`. 0 when there is no such message or stream.
 */
async function sourcedSeq(
  jsm: JetStreamManager,
  stream: string,
  at: { seq: number } | { last_by_subj: string },
  origin: string,
): Promise<number> {
  try {
    return sourceSeqOf((await jsm.streams.getMessage(stream, at))?.header, origin) ?? 0;
  } catch (err) {
    if (isNoMessageFound(err) || isStreamNotFound(err)) return 0;
    throw err;
  }
}

/**
 * The highest sequence of a site's op log from which the hub's aggregate holds an op (0: none): the
 * aggregate's last message on the site's ops subjects names it in its `Nats-Stream-Source` header.
 * The hub's source of that log resumes after it, whatever the log's own numbering says.
 */
export async function hubHoldsUpTo(hub: JetStreamManager, site: string): Promise<number> {
  return sourcedSeq(hub, Streams.hub, { last_by_subj: opsFilter(site) }, Streams.out(site));
}

/** The hub sequence of the last op a site's inbound stream copied from the hub's aggregate (0: none). */
export async function lastCopied(jsm: JetStreamManager, feed: string): Promise<number> {
  let last: number;
  try {
    last = (await jsm.streams.info(feed)).state.last_seq;
  } catch (err) {
    if (isStreamNotFound(err)) return 0;
    throw err;
  }
  return last === 0 ? 0 : sourcedSeq(jsm, feed, { seq: last }, Streams.hub);
}

/** Ops up to this size are checked at the hub one by one ({@link lastOpAtHub}); a larger one is not fetched every period. */
export const LAST_OP_CHECK_MAX_BYTES = 8 * 1024;

/** What {@link lastOpAtHub} found. */
export type LastOpAtHub = {
  /** the aggregate holds the log's last op (or the log is empty): it holds every op stored before */
  held: boolean;
  /** the log's sequence of the aggregate's copy of that op's subject (0: none) */
  upTo: number;
  /** the site's inbound stream holds a copy of that subject from a later aggregate sequence than the aggregate's own: the aggregate was made again */
  restarted: boolean;
  /** when the log was read (ms since the epoch) */
  readAt: number;
};

/**
 * Whether the hub's aggregate holds the last op of a site's log, read in O(1) at both ends (neither
 * read grows with the number of sites): the log's last message, the aggregate's last message on that
 * one subject, and the inbound stream's copy of it. The aggregate copies a source in order, so
 * holding the log's last op means holding every op stored before it. Undefined when that cannot be
 * told cheaply: the log, its last message or the aggregate is missing, or the op is over
 * LAST_OP_CHECK_MAX_BYTES.
 * Throws when the hub does not answer.
 */
export async function lastOpAtHub(
  jsm: JetStreamManager,
  hub: JetStreamManager,
  site: string,
): Promise<LastOpAtHub | undefined> {
  const readAt = Date.now();
  const out = Streams.out(site);
  let m: Awaited<ReturnType<JetStreamManager["streams"]["getMessage"]>>;
  try {
    const last = (await jsm.streams.info(out)).state.last_seq;
    if (last === 0) return { held: true, upTo: 0, restarted: false, readAt };
    m = await jsm.streams.getMessage(out, { seq: last });
  } catch (err) {
    if (isNoMessageFound(err) || isStreamNotFound(err)) return undefined;
    throw err;
  }
  if (!m || m.data.length > LAST_OP_CHECK_MAX_BYTES) return undefined;
  let atHub: { upTo: number; hubSeq: number } = { upTo: 0, hubSeq: 0 };
  try {
    const h = await hub.streams.getMessage(Streams.hub, { last_by_subj: m.subject });
    atHub = { upTo: sourceSeqOf(h?.header, out) ?? 0, hubSeq: h?.seq ?? 0 };
  } catch (err) {
    if (isStreamNotFound(err)) return undefined;
    if (!isNoMessageFound(err)) throw err;
  }
  const copied = await sourcedSeq(jsm, Streams.in(site), { last_by_subj: m.subject }, Streams.hub);
  return {
    held: atHub.upTo >= m.seq,
    upTo: atHub.upTo,
    restarted: atHub.hubSeq > 0 && copied > atHub.hubSeq,
    readAt,
  };
}

/** True when the hub's JetStream answers within `timeoutMs` (the site's leaf link is up both ways). */
export async function hubAnswers(nc: NatsConnection, hubDomain: string, timeoutMs = 2000): Promise<boolean> {
  try {
    await nc.request(`$JS.${hubDomain}.API.INFO`, "", { timeout: timeoutMs });
    return true;
  } catch {
    return false;
  }
}

/**
 * Make the site's outbound op log a source of the hub's aggregate (creating the aggregate when it is
 * missing). Stream updates are not compare-and-set: two sites registering at once may each write a
 * source list without the other's entry, so this re-reads after its update until its entry is there.
 * Returns whether it had to add the entry, what the hub reports of that source (when it was there),
 * the lowest version of the hub's server ({@link versionOfStreamConfig}), when the aggregate was
 * created, how many sources it has and how full it is. The aggregate's info lists every source: its size grows with
 * the number of sites, so a registered site reads it seldom ({@link lastOpAtHub} in between).
 */
export async function ensureHubRegistration(
  nc: NatsConnection,
  config: Config,
  log: Logger,
): Promise<{
  added: boolean;
  source?: StreamSourceInfo;
  hubVersion: string;
  hubCreated: string;
  sources: number;
  /** the aggregate's fill, from the info the round read anyway */
  usage: StoreUsage;
}> {
  const hub = await hubManager(nc, config.hubDomain);
  const mine = siteSource(config.site, config.domain);
  let added = false;
  let upgraded = false;
  for (let attempt = 0; attempt < 50; attempt++) {
    let info: StreamInfo | null = null;
    try {
      info = await hub.streams.info(Streams.hub);
    } catch (err) {
      if (!isStreamNotFound(err)) throw err;
    }
    if (!info) {
      const acct = config.limits.hubMaxBytes > 0 ? 0 : await accountStorageLimit(hub);
      const bytes =
        config.limits.hubMaxBytes > 0
          ? config.limits.hubMaxBytes
          : acct > 0
            ? Math.floor(acct * ByteBudget.hubShare)
            : ByteBudget.hubDefault;
      try {
        await ensureStream(
          hub,
          { ...opLog(Streams.hub, bytes, config.hubReplicas || 1), sources: [mine] },
          log,
          { fitBytes: config.limits.hubMaxBytes === 0 },
        );
        added = true;
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
      }
      continue;
    }
    const src = (info.config.sources ?? []).find((s) => s.name === mine.name);
    if (
      src &&
      !upgraded &&
      src.external?.api === mine.external?.api &&
      src.opt_start_seq !== mine.opt_start_seq
    ) {
      upgraded = true;
      // registered by an earlier version: its entry gets the start that copies a log from its beginning
      await hub.streams.update(Streams.hub, {
        ...info.config,
        sources: (info.config.sources ?? []).map((s) => (s.name === mine.name ? mine : s)),
      });
      log.info(
        { stream: Streams.hub, source: mine.name },
        "the site's entry among the hub's sources now starts at the log's first op",
      );
      continue;
    }
    if (src && src.external?.api === mine.external?.api) {
      const source = info.sources?.find((s) => s.name === mine.name);
      const hubVersion = versionOfStreamConfig(info.config);
      const r = {
        added,
        hubVersion,
        hubCreated: info.created,
        sources: info.config.sources?.length ?? 0,
        usage: streamUsage(info),
      };
      return source ? { ...r, source } : r;
    }
    if (src)
      throw new Error(
        `${mine.name} is a source of ${Streams.hub} from another JetStream domain (${src.external?.api}): another site has this site's name; if that site is gone, run \`syncd site remove ${config.site}\``,
      );
    const others = (info.config.sources ?? []).filter((s) => s.name !== mine.name);
    await hub.streams.update(Streams.hub, { ...info.config, sources: [...others, mine] });
    added = true;
    log.info({ stream: Streams.hub, source: mine.name }, "registered the site's op log at the hub");
    await new Promise((r) => setTimeout(r, 100 + Math.random() * 400));
  }
  throw new Error(
    `could not register ${mine.name} among the sources of ${Streams.hub}: it kept disappearing`,
  );
}

/** How far a stream has sourced one of its origins ({@link sourcedUpTo}). */
export type Sourced = {
  /** the stream's source of that origin as the server reports it (undefined: no such source) */
  lag: number | undefined;
  /** the origin's sequence of the last message the stream holds from it (0: none); undefined when the lag decided */
  upTo?: number;
  /** the origin's last sequence; undefined when the lag decided */
  originLast?: number;
  /** the stream holds the origin's last message, or the server reports a lag of 0 */
  caughtUp: boolean;
};

/** The JetStream API of a source's origin: its `external.api`, else the stream's own. */
async function originManager(
  nc: NatsConnection,
  src: StreamSource,
  own: JetStreamManager,
  timeoutMs: number,
  reach?: JetStreamReach,
): Promise<JetStreamManager> {
  const api = src.external?.api;
  if (!api) return own;
  const d = /^\$JS\.(.+)\.API$/.exec(api);
  if (d && reach) {
    const to = await reach(d[1]!, timeoutMs);
    return jetstreamManager(to.nc, { ...to.opts, checkAPI: false });
  }
  return jetstreamManager(
    nc,
    d ? { domain: d[1]!, timeout: timeoutMs } : { apiPrefix: api, timeout: timeoutMs },
  );
}

/**
 * How a client reaches the JetStream API of another domain (directly, or through the hub relay when
 * the hub isolates leaf interest: the CLI's MeshClient.jetStream).
 */
export type JetStreamReach = (
  domain: string,
  timeoutMs: number,
) => Promise<{ nc: NatsConnection; opts: JetStreamOptions }>;

/**
 * How far stream `stream` (in JetStream domain `domain`, else `nc`'s own) has sourced its origin
 * stream `origin`. A lag of 0 reported by the server is trusted. Otherwise the lag may be stale:
 * nats-server 2.9 counts into it the origin's messages that were compacted away (one message per
 * subject) before they were delivered, and it stays so until the next message. Then the stream's
 * last message from the origin decides: its `Nats-Stream-Source` header gives the origin sequence it
 * was copied from, caught up when that is the origin's `last_seq` (the origin's last message is never
 * compacted). The last message from the origin is the stream's last when the origin is its only
 * source, else the last on the origin's subject (the origin must have one subject; else the lag decides).
 * `info`: the stream's info when already read. Throws when a stream cannot be read.
 */
export async function sourcedUpTo(
  nc: NatsConnection,
  where: { stream: string; domain?: string; info?: StreamInfo; timeoutMs?: number; reach?: JetStreamReach },
  origin: string,
): Promise<Sourced> {
  const timeout = where.timeoutMs ?? 2000;
  const jsm =
    where.domain && where.reach
      ? await where
          .reach(where.domain, timeout)
          .then((to) => jetstreamManager(to.nc, { ...to.opts, checkAPI: false }))
      : await jetstreamManager(nc, where.domain ? { domain: where.domain, timeout } : { timeout });
  const info = where.info ?? (await jsm.streams.info(where.stream));
  const cfg = (info.config.sources ?? []).find((s) => s.name === origin);
  const lag = info.sources?.find((s) => s.name === origin)?.lag;
  if (!cfg || lag === undefined) return { lag, caughtUp: false };
  if (lag === 0) return { lag, caughtUp: true };
  const oi = await (await originManager(nc, cfg, jsm, timeout, where.reach)).streams.info(origin);
  const originLast = oi.state.last_seq;
  const only = (info.config.sources ?? []).length === 1;
  const subjects = cfg.filter_subject ? [cfg.filter_subject] : (oi.config.subjects ?? []);
  if (!only && subjects.length !== 1) return { lag, originLast, caughtUp: originLast === 0 };
  const upTo = only
    ? info.state.last_seq > 0
      ? await sourcedSeq(jsm, where.stream, { seq: info.state.last_seq }, origin)
      : 0
    : await sourcedSeq(jsm, where.stream, { last_by_subj: subjects[0]! }, origin);
  return { lag, upTo, originLast, caughtUp: upTo >= originLast };
}

/**
 * True when a site has nothing in flight: its watcher and merger consumers drained and acked, its
 * inbound stream caught up with the hub's aggregate and the aggregate with every site's op log
 * ({@link sourcedUpTo}: not the server's lag alone, which nats-server 2.9 leaves stale). A stalled
 * source reports lag 0 too, so the counts are compared as well: IN holds at least one op per
 * subject the aggregate holds, the aggregate one per subject the site's OUT holds. `domain`: the
 * site's JetStream domain when `nc` is connected elsewhere; the hub unreachable counts as not quiet.
 */
export async function siteQuiet(
  nc: NatsConnection,
  site: string,
  opts: { buckets: string[]; hubDomain: string; domain?: string },
): Promise<boolean> {
  const jsm = await jetstreamManager(nc, opts.domain ? { domain: opts.domain } : {});
  const consumers: [string, string][] = [
    [Streams.in(site), Durables.merger],
    [Streams.ingress(site), Durables.merger],
    ...opts.buckets.map((b): [string, string] => [kvStream(b), Durables.watcher(site, b)]),
  ];
  for (const [stream, durable] of consumers) {
    const ci = await jsm.consumers.info(stream, durable);
    if (ci.num_pending > 0 || ci.num_ack_pending > 0) return false;
  }
  const si = await jsm.streams.info(Streams.in(site));
  try {
    const hub = await jetstreamManager(nc, { domain: opts.hubDomain, timeout: 2000 });
    const hi = await hub.streams.info(Streams.hub);
    const feed = { stream: Streams.in(site), info: si, ...(opts.domain ? { domain: opts.domain } : {}) };
    if (!(await sourcedUpTo(nc, feed, Streams.hub)).caughtUp) return false;
    for (const s of hi.config.sources ?? []) {
      const at = { stream: Streams.hub, domain: opts.hubDomain, info: hi };
      if (!(await sourcedUpTo(nc, at, s.name)).caughtUp) return false;
    }
    const out = await jsm.streams.info(Streams.out(site));
    return (
      si.state.messages >= hi.state.messages && (hi.state.num_subjects ?? 0) >= (out.state.num_subjects ?? 0)
    );
  } catch {
    return false;
  }
}

/**
 * True when replication is on between a site and `peers`: the site's inbound stream sources the hub's
 * aggregate (the merger creates it so) and the aggregate sources the op log of the site and of each
 * peer (their watchers register them). Any error (the hub unreachable) counts as not linked.
 */
export async function siteLinked(
  nc: NatsConnection,
  site: string,
  peers: string[],
  opts: { hubDomain: string; domain?: string },
): Promise<boolean> {
  try {
    const jsm = await jetstreamManager(nc, opts.domain ? { domain: opts.domain } : {});
    const si = await jsm.streams.info(Streams.in(site));
    if (!(si.config.sources ?? []).some((s) => s.name === Streams.hub)) return false;
    const hub = await jetstreamManager(nc, { domain: opts.hubDomain, timeout: 2000 });
    const hi = await hub.streams.info(Streams.hub);
    const names = new Set((hi.config.sources ?? []).map((s) => s.name));
    return [site, ...peers].every((p) => names.has(Streams.out(p)));
  } catch {
    return false;
  }
}
