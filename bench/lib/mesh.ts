/**
 * The bench's view of a mesh started by the test harness (test/harness/mesh.ts): connections per
 * site, the processes to measure, quiet checks, stream counts, endpoint calls.
 */
import {
  type JetStreamClient,
  type JetStreamManager,
  StorageType,
  jetstream,
  jetstreamManager,
} from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import {
  Durables,
  Streams,
  endpointSubject,
  kvStream,
  metaBucket,
  parseReply,
  requestAnywhere,
  requestJson,
  siteLinked,
  siteQuiet,
} from "../../services/mod.ts";
import { type Mesh, type MeshOptions, type ServiceKind, startMesh } from "../../test/harness/mesh.ts";
import { log, pipelined, sleep, value100, waitUntil } from "./util.ts";

export const BUCKET = "config";

export type SiteConn = { nc: NatsConnection; js: JetStreamClient; jsm: JetStreamManager; kv: KV; meta?: KV };

export type BenchMesh = {
  mesh: Mesh;
  sites: string[];
  conn: Record<string, SiteConn>;
  services: boolean;
  stop: () => Promise<void>;
};

/** A measured process: a service instance or a nats-server. */
export type Measured = {
  site: string;
  kind: ServiceKind | "agent" | "nats-server" | "hub";
  name: string;
  pid: number;
};

/**
 * Start a mesh (free ports, temp dir) and open one connection per site. With services: periodic
 * anti-entropy off, and wait until every site is linked through the hub's aggregate.
 */
export async function startBenchMesh(
  o: {
    sites?: string[];
    services?: boolean;
    scale?: MeshOptions["scale"];
    serviceArgs?: string[];
    /** each site's services in one agent process */
    agent?: boolean;
    /** the hub isolates leaf interest (default: the harness's, "auto") */
    isolate?: boolean;
  } = {},
): Promise<BenchMesh> {
  const sites = o.sites ?? ["a", "b"];
  const services = o.services ?? true;
  const mesh = await startMesh({
    sites,
    services,
    ...(o.scale ? { scale: o.scale } : {}),
    ...(o.agent !== undefined ? { agent: o.agent } : {}),
    ...(o.isolate !== undefined ? { isolate: o.isolate } : {}),
    serviceArgs: ["--reconcile-interval", "0", ...(o.serviceArgs ?? [])],
    logLevel: process.env.LOG_LEVEL ?? "info",
    readyTimeoutMs: Number(process.env.BENCH_READY_MS ?? 60_000),
  });
  try {
    const conn: Record<string, SiteConn> = {};
    for (const s of sites) conn[s] = await openSite(mesh, s, services);
    const bm: BenchMesh = { mesh, sites, conn, services, stop: () => mesh.stop() };
    if (services) await linked(bm);
    return bm;
  } catch (err) {
    await mesh.stop();
    throw err;
  }
}

/** Connections and handles of one site (the bucket is created when missing, history 1). */
export async function openSite(mesh: Mesh, site: string, withMeta: boolean): Promise<SiteConn> {
  const nc = await mesh.connect(site, { name: `bench-${site}` });
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const kv = await mesh.kv(site);
  const sc: SiteConn = { nc, js, jsm, kv };
  if (withMeta) sc.meta = await new Kvm(nc).open(metaBucket(BUCKET));
  return sc;
}

/** The hub's JetStream domain of the harness's mesh (the services' default). */
export const HUB_DOMAIN = "hub";

/** What `siteQuiet` checks at a bench site: the one bucket, the hub's domain. */
export const QUIET = { buckets: [BUCKET], hubDomain: HUB_DOMAIN };

/**
 * Wait until replication is on through the hub: the hub's aggregate sources every site's op log (the
 * watchers register them) and every site's FEED stream sources the aggregate (the merger creates it so).
 */
export async function linked(bm: BenchMesh, timeoutMs = 60_000): Promise<void> {
  for (const s of bm.sites) {
    await waitUntil(
      `site ${s} linked through the hub to ${bm.sites.length - 1} peers`,
      () =>
        siteLinked(
          bm.conn[s]!.nc,
          s,
          bm.sites.filter((p) => p !== s),
          { hubDomain: HUB_DOMAIN },
        ),
      timeoutMs,
      100,
    );
  }
}

/** Put `n` keys `<prefix>.<i>` at `from` and wait until every other site holds them all (warms up JIT and sources). */
export async function warmUp(bm: BenchMesh, from: string, prefix: string, n = 300): Promise<void> {
  const kv = bm.conn[from]!.kv;
  await pipelined(n, 64, (i) => kv.put(`${prefix}.${i}`, value100(`w${i}`)));
  for (const s of bm.sites) {
    if (s === from) continue;
    await waitUntil(
      `warm-up keys at ${s}`,
      async () => (await bm.conn[s]!.kv.get(`${prefix}.${n - 1}`)) !== null,
      60_000,
    );
  }
  await quiet(bm, 60_000);
}

/** Messages stored in a stream and its last sequence. */
export async function streamState(
  jsm: JetStreamManager,
  stream: string,
): Promise<{ messages: number; last_seq: number }> {
  const si = await jsm.streams.info(stream);
  return { messages: si.state.messages, last_seq: si.state.last_seq };
}

/** Work left at a site: pending + ack-pending of the watcher and merger consumers, source lag. */
export async function backlog(
  jsm: JetStreamManager,
  site: string,
): Promise<{ watcher: number; merger: number; source_lag: number }> {
  const w = await jsm.consumers.info(kvStream(BUCKET), Durables.watcher(site, BUCKET));
  const m = await jsm.consumers.info(Streams.in(site), Durables.merger);
  const si = await jsm.streams.info(Streams.in(site));
  return {
    watcher: w.num_pending + w.num_ack_pending,
    merger: m.num_pending + m.num_ack_pending,
    source_lag: (si.sources ?? []).reduce((a, s) => a + s.lag, 0),
  };
}

/** Wait until every site is quiet twice in a row. */
export async function quiet(bm: BenchMesh, timeoutMs: number): Promise<void> {
  let streak = 0;
  await waitUntil(
    "mesh quiet",
    async () => {
      const all = await Promise.all(bm.sites.map((s) => siteQuiet(bm.conn[s]!.nc, s, QUIET)));
      streak = all.every(Boolean) ? streak + 1 : 0;
      return streak >= 2;
    },
    timeoutMs,
    100,
  );
}

/** Every service instance and nats-server of the mesh with its pid. */
export function processes(bm: BenchMesh): Measured[] {
  const out: Measured[] = [];
  const topo = bm.mesh.topology;
  if (topo.hub.pid) out.push({ site: "hub", kind: "hub", name: "hub", pid: topo.hub.pid });
  for (const s of bm.sites) {
    const pid = topo.site(s).pid;
    if (pid) out.push({ site: s, kind: "nats-server", name: "nats-server", pid });
    for (const i of bm.mesh.services(s))
      if (i.pid > 0) out.push({ site: s, kind: i.kind, name: i.name, pid: i.pid });
  }
  return out;
}

/** Call a syncd endpoint (JSON), returning the reply and the payload bytes of request + reply. */
export async function call<T>(
  nc: NatsConnection,
  site: string,
  service: ServiceKind,
  endpoint: string,
  body: unknown = {},
  timeout = 10_000,
): Promise<{ value: T; bytes: number }> {
  const subject = endpointSubject(site, service, endpoint);
  // a connection at another site reaches it directly or through the hub relay (isolated leaf interest)
  if (nc.info?.server_name !== `site-${site}`) {
    const data = new TextEncoder().encode(JSON.stringify(body ?? {}));
    return parseReply<T>(await requestAnywhere(nc, subject, { data }, timeout), subject, data.length);
  }
  return requestJson<T>(nc, subject, body, { timeout });
}

/** Stop the bench mesh, logging (not throwing) a failure. */
export async function stopQuietly(bm: BenchMesh | undefined): Promise<void> {
  if (!bm) return;
  try {
    await bm.stop();
  } catch (err) {
    log(`mesh stop failed: ${(err as Error).message}`);
  }
  await sleep(200);
}

/** The native baseline's stream at b: sources a's KV_config across domains (no syncd involved). */
export const NATIVE_SRC = "NATIVE_SRC";

/**
 * The mesh of the native baseline: hub + sites a, b without services, the hub passing leaf interest
 * on (a hub that isolates it, 2.12+, keeps b's source from reaching `$JS.a.API` and its deliveries
 * from crossing: native leaf-to-leaf sourcing needs that interest).
 */
export function startNativeMesh(): Promise<BenchMesh> {
  return startBenchMesh({ services: false, isolate: false });
}

/** Create the native baseline at b once a's JetStream domain is reachable from b. */
export async function addNativeSource(b: SiteConn): Promise<void> {
  await waitUntil(
    "$JS.a.API reachable from b",
    async () => (await (await jetstreamManager(b.nc, { domain: "a" })).getAccountInfo()).domain === "a",
    20_000,
    100,
  );
  await b.jsm.streams.add({
    name: NATIVE_SRC,
    storage: StorageType.File,
    sources: [{ name: kvStream(BUCKET), external: { api: "$JS.a.API", deliver: "" } }],
  });
}
