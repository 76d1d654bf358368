/**
 * Assertions and waits shared by the integration tests: reading buckets and versions, counting ops,
 * and waiting until a mesh is quiet (every consumer and source caught up).
 */
import { type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import { type NatsConnection, headers as natsHeaders } from "@nats-io/nats-core";
import {
  Durables,
  Headers,
  Streams,
  type Version,
  endpointSubject,
  kvStream,
  kvSubject,
  metaBucket,
  requestJson,
  valueHash,
} from "../services/mod.ts";
import { type Mesh, type MeshOptions, startMesh, waitFor } from "./harness/mesh.ts";

/** The harness's waitFor with the integration tests' defaults (15 s, polls every 100 ms). */
export function until<T>(
  fn: () => Promise<T> | T,
  opts: { timeout?: number; interval?: number; message?: string } = {},
): ReturnType<typeof waitFor<T>> {
  return waitFor(fn, { timeout: 15_000, interval: 100, ...opts });
}

/** The contents of a bucket: key → value (text), tombstones and deleted keys absent. */
export async function contents(kv: KV): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for await (const k of await kv.keys()) {
    const e = await kv.get(k);
    if (e?.operation === "PUT") out.set(k, e.string());
  }
  return out;
}

/** The `_meta` versions of a site: key → version. */
export async function versions(nc: NatsConnection, bucket = "config"): Promise<Map<string, Version>> {
  const kv = await new Kvm(nc).open(metaBucket(bucket));
  const out = new Map<string, Version>();
  for await (const k of await kv.keys()) {
    const e = await kv.get(k);
    if (e?.operation === "PUT") out.set(k, e.json<Version>());
  }
  return out;
}

/** The replicated part of a version (without the site-local `rev` and `merged`), for comparing sites. */
export function replicated(
  v: Version | undefined,
): Pick<Version, "ts" | "node_id" | "deleted" | "vh"> | undefined {
  return v && { ts: v.ts, node_id: v.node_id, deleted: v.deleted, ...(v.vh ? { vh: v.vh } : {}) };
}

/**
 * A change made behind the services' back, as a merger would make it but without any op: the
 * `_meta` version first (a merger's commit point), then the bucket entry with its version headers.
 * In that order the watcher sees a merger's write; the other way round, a headed entry that `_meta`
 * does not know is taken for a user's write with forged headers, and replicated.
 */
export async function plantVersion(
  nc: NatsConnection,
  p: {
    bucket?: string;
    key: string;
    ts: number;
    node_id: string;
    deleted?: boolean;
    value?: string | Uint8Array;
    legacy?: boolean;
  },
): Promise<number> {
  const bucket = p.bucket ?? "config";
  const deleted = p.deleted ?? false;
  const bytes =
    typeof p.value === "string" ? new TextEncoder().encode(p.value) : (p.value ?? new Uint8Array());
  const kvm = new Kvm(nc);
  const base = (await (await kvm.open(bucket)).get(p.key))?.revision ?? 0;
  const extra = p.legacy ? {} : { merged: true, ...(deleted ? {} : { vh: valueHash(bytes) }) };
  const version = { ts: p.ts, node_id: p.node_id, deleted, rev: base, ...extra };
  await (await kvm.open(metaBucket(bucket))).put(p.key, JSON.stringify(version));
  const h = natsHeaders();
  h.set(Headers.ts, String(p.ts));
  h.set(Headers.node, p.node_id);
  if (deleted) h.set("KV-Operation", "DEL");
  const pa = await jetstream(nc).publish(kvSubject(bucket, p.key), deleted ? new Uint8Array() : bytes, {
    headers: h,
  });
  return pa.seq;
}

/** Number of messages stored in a stream. */
export async function streamCount(jsm: JetStreamManager, stream: string): Promise<number> {
  return (await jsm.streams.info(stream)).state.messages;
}

/**
 * True when a site has nothing in flight: watcher and merger consumers drained, its inbound stream's
 * source and the hub aggregate's sources caught up.
 */
export async function siteQuiet(nc: NatsConnection, site: string, buckets = ["config"]): Promise<boolean> {
  const jsm = await jetstreamManager(nc);
  const consumers: [string, string][] = [
    [Streams.in(site), Durables.merger],
    [Streams.ingress(site), Durables.merger],
    ...buckets.map((b): [string, string] => [kvStream(b), Durables.watcher(site, b)]),
  ];
  for (const [stream, durable] of consumers) {
    const ci = await jsm.consumers.info(stream, durable);
    if (ci.num_pending > 0 || ci.num_ack_pending > 0) return false;
  }
  const si = await jsm.streams.info(Streams.in(site));
  if (!(si.sources ?? []).every((s) => s.lag === 0)) return false;
  try {
    const hub = await jetstreamManager(nc, { domain: HUB_DOMAIN, timeout: 2000 });
    const hi = await hub.streams.info(Streams.hub);
    if (!(hi.sources ?? []).every((s) => s.lag === 0)) return false;
    // a stalled source reports lag 0 too: IN holds (at least) one op per subject the hub holds,
    // and the hub one per subject the site's OUT holds
    const out = await jsm.streams.info(Streams.out(site));
    return (
      si.state.messages >= hi.state.messages && (hi.state.num_subjects ?? 0) >= (out.state.num_subjects ?? 0)
    );
  } catch {
    return false;
  }
}

/** The hub's JetStream domain in the tests (the services' default). */
export const HUB_DOMAIN = "hub";

/** Wait until every given site is quiet twice in a row. */
export async function quiet(
  ncs: Record<string, NatsConnection>,
  opts: { timeout?: number } = {},
): Promise<void> {
  let streak = 0;
  await until(
    async () => {
      const all = await Promise.all(Object.entries(ncs).map(([s, nc]) => siteQuiet(nc, s)));
      streak = all.every(Boolean) ? streak + 1 : 0;
      return streak >= 2;
    },
    { timeout: opts.timeout ?? 20_000, interval: 150, message: "mesh did not become quiet" },
  );
}

/**
 * Wait until replication is on between a site and the given peers: the hub's aggregate sources each
 * of their op logs and the site's own (the watchers register them) and the site's IN stream sources
 * the aggregate (the merger creates it so).
 */
export async function peersLinked(
  nc: NatsConnection,
  site: string,
  peers: string[],
  timeout = 20_000,
): Promise<void> {
  const jsm = await jetstreamManager(nc);
  await until(
    async () => {
      try {
        const si = await jsm.streams.info(Streams.in(site));
        if (!(si.config.sources ?? []).some((s) => s.name === Streams.hub)) return false;
        const hub = await jetstreamManager(nc, { domain: HUB_DOMAIN, timeout: 2000 });
        const hi = await hub.streams.info(Streams.hub);
        const names = new Set((hi.config.sources ?? []).map((s) => s.name));
        return [site, ...peers].every((p) => names.has(Streams.out(p)));
      } catch {
        return false;
      }
    },
    { timeout, message: `site ${site} and ${peers.join(",")} are not all linked through the hub` },
  );
}

/** Call a syncd endpoint of a site. */
export async function call<T>(
  nc: NatsConnection,
  site: string,
  service: "clock" | "watcher" | "merger" | "reconciler",
  endpoint: string,
  body: unknown = {},
): Promise<T> {
  return (await requestJson<T>(nc, endpointSubject(site, service, endpoint), body, { timeout: 10_000 }))
    .value;
}

/** A started mesh with a connection and the `config` bucket of every site, each site sourcing every other. */
export type LinkedMesh = { mesh: Mesh; nc: Record<string, NatsConnection>; kv: Record<string, KV> };

/** Start a mesh and wait until every site's IN stream sources every other site (replication is on). */
export async function startLinkedMesh(opts: MeshOptions = {}): Promise<LinkedMesh> {
  const sites = opts.sites ?? ["a", "b"];
  const mesh = await startMesh({ ...opts, sites });
  const nc: Record<string, NatsConnection> = {};
  const kv: Record<string, KV> = {};
  for (const s of sites) {
    nc[s] = await mesh.connect(s);
    kv[s] = await mesh.kv(s);
  }
  for (const s of sites)
    await peersLinked(
      nc[s]!,
      s,
      sites.filter((p) => p !== s),
    );
  return { mesh, nc, kv };
}
