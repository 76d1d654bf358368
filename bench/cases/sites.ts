/**
 * Case "sites" (#11.7): what one more site costs. For N = 2, 4, 8, 16 sites (quick: 2, 4; or
 * BENCH_SITES=2,4,...) with all four services each at their default settings, measured from the
 * servers' monitoring endpoints: hub msgs/s while idle (/varz in+out msgs), the hub's and each
 * site's subscriptions (/subsz), idle CPU of the servers and the services, one write → last site,
 * bytes per op on a site's uplink (/leafz: the writer's out, a receiver's in, idle traffic
 * subtracted), the catch-up time after a hub outage (30 s; quick 10 s; BENCH_SITES_OUTAGE_S, 0 =
 * skipped) and one anti-entropy run from the first site to the last. Each N runs twice when the
 * server can isolate leaf interest (nats-server 2.12+): the hub without isolation (every site learns
 * every other site's subscriptions) and with it (README "What the mesh is"; anti-entropy through
 * the hub relay); BENCH_SITES_ISOLATE=0 or 1 runs one of them only. The full-mesh code path is gone
 * (the issue's table is its baseline).
 */
import { availableParallelism } from "node:os";
import { DeliverPolicy, jetstream } from "@nats-io/jetstream";
import { type KV, KvWatchInclude } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import { findNatsServer, supportsLeafIsolation } from "../../scripts/lib/topology.ts";
import { Streams, opsSubject } from "../../services/mod.ts";
import { type Mesh, startMesh } from "../../test/harness/mesh.ts";
import { type CpuSnapshot, cpuDelta, cpuSnapshot, schedMs } from "../lib/procstat.ts";
import { type Varz, getJson, log, median, round, sleep, table, value100, waitUntil } from "../lib/util.ts";
import type { BenchContext, CaseDef } from "./types.ts";

/** One N's figures. */
export type SitesRow = {
  sites: number;
  /** the hub isolates leaf interest */
  isolated?: boolean;
  hub_msgs_s_idle: number;
  /** bytes in + out of the hub per second while idle (/varz): what grows with N per period, e.g. stream info reads */
  hub_bytes_s_idle?: number;
  hub_subs: number;
  site_subs_mean: number;
  site_subs_max: number;
  /** % of one core over the idle window */
  idle_cpu_servers_pct: number;
  idle_cpu_services_pct: number;
  /** per site: servers + services of one site, mean over the sites */
  idle_cpu_per_site_pct: number;
  write_to_last_site_ms: number;
  /** the same write's op in the last site's FEED: NATS's own sourcing through the hub (ms, median of 5) */
  write_to_last_feed_ms?: number;
  /** one write → the second site, the services of every other site stopped (ms, median of 5) */
  write_to_site_alone_ms?: number;
  /** CPU of one lone write per site (ms, mean over the sites): its services, its nats-server */
  lone_op_cpu_services_ms?: number;
  lone_op_cpu_server_ms?: number;
  /** N × (services + server) per site / this host's cores: the floor of "one write → last site" here */
  host_bound_ms?: number;
  uplink_out_bytes_per_op: number;
  uplink_in_bytes_per_op: number;
  catch_up_ms: number;
  outage_s: number;
  /** one anti-entropy run, first site → last site (nothing to move): ms, or the error */
  reconcile_ms?: number;
  reconcile_error?: string;
  error?: string;
};

export type SitesResult = { rows: SitesRow[]; idle_s: number; note: string };

type Leafz = { leafs?: { in_bytes: number; out_bytes: number }[] };

function siteNames(n: number): string[] {
  return Array.from({ length: n }, (_, i) => `s${String(i + 1).padStart(2, "0")}`);
}

async function leafBytes(monitorUrl: string): Promise<{ in: number; out: number }> {
  const l = await getJson<Leafz>(`${monitorUrl}/leafz`);
  let i = 0;
  let o = 0;
  for (const x of l.leafs ?? []) {
    i += x.in_bytes;
    o += x.out_bytes;
  }
  return { in: i, out: o };
}

/**
 * CPU (ms, per site, mean over the sites) of one lone write at the first site: the median over
 * PAIRS pairs of 1 s windows, one with the write and one without, of their difference; per-thread
 * scheduler time (ns), so short bursts count exactly. `host_bound_ms`: all sites' CPU for one write over this host's
 * cores — the least one write → last site can take when every site shares this host.
 */
const PAIRS = 9;

async function loneOpCpu(
  mesh: Mesh,
  sites: string[],
  kv: KV,
): Promise<Pick<SitesRow, "lone_op_cpu_services_ms" | "lone_op_cpu_server_ms" | "host_bound_ms">> {
  const p = pids(mesh, sites);
  const servers = new Set(p.servers);
  const all = [...p.servers.filter((x) => x !== mesh.topology.hub.pid), ...p.services];
  const window = async (write: string | null) => {
    const a = all.map(schedMs);
    if (write) await kv.put(write, value100(write));
    await sleep(1000);
    let srv = 0;
    let svc = 0;
    all.forEach((pid, i) => {
      const d = schedMs(pid) - a[i]!;
      if (servers.has(pid)) srv += d;
      else svc += d;
    });
    return { srv, svc };
  };
  // median over pairs (a window with the write, then one without) of the difference: a periodic
  // burst (timers, heartbeats) lands in either window of a pair, the median leaves it out
  const svcs: number[] = [];
  const srvs: number[] = [];
  for (let i = 0; i < PAIRS; i++) {
    const b = await window(`bench.lone.${i}`);
    const q = await window(null);
    svcs.push((b.svc - q.svc) / sites.length);
    srvs.push((b.srv - q.srv) / sites.length);
  }
  const svc = round(Math.max(0, median(svcs)), 2);
  const srv = round(Math.max(0, median(srvs)), 2);
  return {
    lone_op_cpu_services_ms: svc,
    lone_op_cpu_server_ms: srv,
    host_bound_ms: round(((svc + srv) * sites.length) / availableParallelism(), 1),
  };
}

/** Wait until every site's bucket holds `key` with `value`; resolves with ms since `t0`. */
async function reachedAll(kvs: KV[], key: string, t0: number, timeoutMs: number): Promise<number> {
  let last = 0;
  await Promise.all(
    kvs.map(async (kv) => {
      const end = Date.now() + timeoutMs;
      for (;;) {
        if ((await kv.get(key)) !== null) break;
        if (Date.now() > end) throw new Error(`${key} not replicated in ${timeoutMs} ms`);
        await sleep(5);
      }
      last = Math.max(last, performance.now() - t0);
    }),
  );
  return round(last);
}

/**
 * Watch `key` at every site (the watches exist before the write, so nothing polls while the op
 * travels: polling N sites every few ms loads the host in proportion to N), and the op for it in
 * every site's FEED (what NATS's own sourcing delivers, through the hub, before any service acts);
 * then `since(t0)` gives the ms from t0 until the last site holds it: in its FEED, in its bucket.
 */
async function arrivals(
  kvs: KV[],
  ncs: NatsConnection[],
  sites: string[],
  key: string,
): Promise<{ since: (t0: number, timeoutMs: number) => Promise<{ feed: number; bucket: number }> }> {
  const bucketAt: number[] = [];
  const feedAt: number[] = [];
  const watches = await Promise.all(kvs.map((kv) => kv.watch({ key, include: KvWatchInclude.UpdatesOnly })));
  const subject = opsSubject(sites[0]!, "config", key);
  const feeds = await Promise.all(
    ncs.map(async (nc, i) => {
      const c = await jetstream(nc).consumers.get(Streams.in(sites[i]!), {
        filter_subjects: [subject],
        deliver_policy: DeliverPolicy.New,
      });
      return c.consume();
    }),
  );
  const first = async <T>(it: AsyncIterable<T>, ok: (e: T) => boolean, at: number[]) => {
    for await (const e of it) {
      if (ok(e)) {
        at.push(performance.now());
        break;
      }
    }
  };
  const got = [
    ...watches.map((w) => first(w, (e) => e.operation === "PUT", bucketAt)),
    ...feeds.map((f) => first(f, () => true, feedAt)),
  ];
  return {
    since: async (t0, timeoutMs) => {
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          Promise.all(got),
          new Promise((_, reject) => {
            timer = setTimeout(
              () => reject(new Error(`${key} not replicated in ${timeoutMs} ms`)),
              timeoutMs,
            );
          }),
        ]);
      } finally {
        clearTimeout(timer);
        for (const w of watches) w.stop();
        for (const f of feeds) f.stop();
      }
      return { feed: round(Math.max(...feedAt) - t0), bucket: round(Math.max(...bucketAt) - t0) };
    },
  };
}

function pids(
  mesh: Mesh,
  sites: string[],
): { servers: number[]; services: number[]; bySite: Map<string, number[]> } {
  const servers: number[] = [];
  const services: number[] = [];
  const bySite = new Map<string, number[]>();
  const hub = mesh.topology.hub.pid;
  if (hub) servers.push(hub);
  for (const s of sites) {
    const mine: number[] = [];
    const p = mesh.topology.site(s).pid;
    if (p) {
      servers.push(p);
      mine.push(p);
    }
    for (const i of mesh.services(s))
      if (i.pid > 0) {
        services.push(i.pid);
        mine.push(i.pid);
      }
    bySite.set(s, mine);
  }
  return { servers, services, bySite };
}

function pctOf(d: ReturnType<typeof cpuDelta>, want: number[], ms: number): number {
  const set = new Set(want);
  let cpu = 0;
  for (const [pid, c] of d.byPid) if (set.has(pid)) cpu += c;
  return round((100 * cpu) / ms, 2);
}

async function measure(n: number, idleS: number, outageS: number, isolated: boolean): Promise<SitesRow> {
  const sites = siteNames(n);
  log(`sites: starting ${n} sites${isolated ? " (hub isolates leaf interest)" : ""}`);
  const mesh = await startMesh({
    sites,
    isolate: isolated,
    readyTimeoutMs: 120_000,
    logLevel: process.env.LOG_LEVEL ?? "warn",
  });
  const row: SitesRow = {
    sites: n,
    isolated,
    hub_msgs_s_idle: 0,
    hub_subs: 0,
    site_subs_mean: 0,
    site_subs_max: 0,
    idle_cpu_servers_pct: 0,
    idle_cpu_services_pct: 0,
    idle_cpu_per_site_pct: 0,
    write_to_last_site_ms: 0,
    uplink_out_bytes_per_op: 0,
    uplink_in_bytes_per_op: 0,
    catch_up_ms: 0,
    outage_s: outageS,
  };
  try {
    const kvs: KV[] = [];
    for (const s of sites) kvs.push(await mesh.kv(s));
    const hubUrl = mesh.topology.hub.httpUrl;
    // ready: a write at the first site reaches every site
    await waitUntil(
      "warm-up write everywhere",
      async () => {
        await kvs[0]!.put("bench.warm", value100("warm"));
        try {
          await reachedAll(kvs, "bench.warm", performance.now(), 2000);
          return true;
        } catch {
          return false;
        }
      },
      180_000,
      500,
    );
    await sleep(3000);

    // idle window
    const p = pids(mesh, sites);
    const v0 = await getJson<Varz>(`${hubUrl}/varz`);
    const c0: CpuSnapshot = cpuSnapshot([...p.servers, ...p.services]);
    const t0 = performance.now();
    await sleep(idleS * 1000);
    const v1 = await getJson<Varz>(`${hubUrl}/varz`);
    const d = cpuDelta(c0, cpuSnapshot([...p.servers, ...p.services]));
    const ms = performance.now() - t0;
    row.hub_msgs_s_idle = round((v1.in_msgs + v1.out_msgs - v0.in_msgs - v0.out_msgs) / (ms / 1000), 1);
    row.hub_bytes_s_idle = round((v1.in_bytes + v1.out_bytes - v0.in_bytes - v0.out_bytes) / (ms / 1000), 0);
    row.idle_cpu_servers_pct = pctOf(d, p.servers, ms);
    row.idle_cpu_services_pct = pctOf(d, p.services, ms);
    row.idle_cpu_per_site_pct = round(
      sites.reduce((a, s) => a + pctOf(d, p.bySite.get(s) ?? [], ms), 0) / sites.length,
      2,
    );
    row.hub_subs = v1.subscriptions;
    const subs: number[] = [];
    for (const s of sites)
      subs.push((await getJson<Varz>(`${mesh.sites[s]!.monitorUrl}/varz`)).subscriptions);
    row.site_subs_mean = round(subs.reduce((a, b) => a + b, 0) / subs.length, 1);
    row.site_subs_max = Math.max(...subs);

    // one write → last site (median of 5), seen by watches made before the write
    const lat: number[] = [];
    const feedLat: number[] = [];
    const ncs: NatsConnection[] = [];
    for (const s of sites) ncs.push(await mesh.connect(s));
    for (let i = 0; i < 5; i++) {
      const key = `bench.one.${i}`;
      const seen = await arrivals(kvs, ncs, sites, key);
      const t = performance.now();
      await kvs[0]!.put(key, value100(key));
      const r = await seen.since(t, 60_000);
      lat.push(r.bucket);
      feedLat.push(r.feed);
    }
    for (const nc of ncs) await nc.close();
    row.write_to_last_site_ms = median(lat);
    row.write_to_last_feed_ms = median(feedLat);

    // bytes per op on the uplinks: the writer's out, a receiver's in; idle bytes subtracted
    const writer = mesh.sites[sites[0]!]!.monitorUrl;
    const receiver = mesh.sites[sites[1]!]!.monitorUrl;
    const idle0 = [await leafBytes(writer), await leafBytes(receiver)];
    const ti = performance.now();
    await sleep(3000);
    const idle1 = [await leafBytes(writer), await leafBytes(receiver)];
    const idleMs = performance.now() - ti;
    const ops = 200;
    const b0 = [await leafBytes(writer), await leafBytes(receiver)];
    const tb = performance.now();
    for (let i = 0; i < ops; i++) await kvs[0]!.put(`bench.bytes.${i}`, value100(`b${i}`));
    await reachedAll(kvs, `bench.bytes.${ops - 1}`, performance.now(), 60_000);
    await sleep(1000);
    const b1 = [await leafBytes(writer), await leafBytes(receiver)];
    const busyMs = performance.now() - tb;
    const idleOut = ((idle1[0]!.out - idle0[0]!.out) / idleMs) * busyMs;
    const idleIn = ((idle1[1]!.in - idle0[1]!.in) / idleMs) * busyMs;
    row.uplink_out_bytes_per_op = round((b1[0]!.out - b0[0]!.out - idleOut) / ops, 0);
    row.uplink_in_bytes_per_op = round((b1[1]!.in - b0[1]!.in - idleIn) / ops, 0);

    // one anti-entropy run between the first and the last site (through the relay when isolated)
    const first = sites[0]!;
    const last = sites[sites.length - 1]!;
    const nc = await mesh.connect(first);
    const tr = performance.now();
    try {
      const r = await nc.request(`syncd.${first}.reconciler.run`, JSON.stringify({ peers: [last] }), {
        timeout: 60_000,
      });
      const runs = (r.json() as { runs?: { error?: string }[] }).runs ?? [];
      const err = runs.find((x) => x.error)?.error ?? (runs.length === 0 ? "no run" : undefined);
      if (err) row.reconcile_error = err;
      else row.reconcile_ms = round(performance.now() - tr);
    } catch (err) {
      row.reconcile_error = (err as Error).message;
    }

    if (outageS > 0) {
      // hub outage: writes at the first site wait in its log; catch-up after the hub is back
      await mesh.stopHub();
      for (let i = 0; i < 100; i++) await kvs[0]!.put(`bench.outage.${i}`, value100(`o${i}`));
      await sleep(outageS * 1000);
      const th = performance.now();
      await mesh.startHub();
      row.catch_up_ms = await reachedAll(kvs, "bench.outage.99", th, 300_000);
    }

    // what one lone write costs a site (CPU, every process of it), and the path alone: the second
    // site's latency once no other site's services compete for this host's cores
    Object.assign(row, await loneOpCpu(mesh, sites, kvs[0]!));
    for (const s of sites.slice(2)) await mesh.stopServices(s);
    await sleep(2000);
    const two = [sites[0]!, sites[1]!];
    const pair = [kvs[0]!, kvs[1]!];
    const pairNc = [await mesh.connect(sites[0]!), await mesh.connect(sites[1]!)];
    const alone: number[] = [];
    for (let i = 0; i < 5; i++) {
      const key = `bench.alone.${i}`;
      const seen = await arrivals(pair, pairNc, two, key);
      const t = performance.now();
      await kvs[0]!.put(key, value100(key));
      alone.push((await seen.since(t, 60_000)).bucket);
    }
    for (const c of pairNc) await c.close();
    row.write_to_site_alone_ms = median(alone);
    log(`sites: ${n} → ${JSON.stringify(row)}`);
  } catch (err) {
    row.error = (err as Error).message;
    log(`sites: ${n} failed: ${row.error}`);
  } finally {
    await mesh.stop().catch(() => {});
  }
  return row;
}

export const sitesCase: CaseDef = {
  name: "sites",
  title: "8. Sites: per-site and hub cost as the mesh grows",
  async run(ctx: BenchContext): Promise<SitesResult> {
    const ns = (process.env.BENCH_SITES ?? (ctx.quick ? "2,4" : "2,4,8,16"))
      .split(",")
      .map((x) => Number(x.trim()))
      .filter((x) => Number.isInteger(x) && x >= 2);
    const idleS = ctx.quick ? 10 : 20;
    const outageS = Number(process.env.BENCH_SITES_OUTAGE_S ?? (ctx.quick ? 10 : 30));
    const want = process.env.BENCH_SITES_ISOLATE;
    const canIsolate = supportsLeafIsolation(findNatsServer());
    const variants = want === "0" ? [false] : want === "1" ? [true] : canIsolate ? [false, true] : [false];
    const rows: SitesRow[] = [];
    for (const n of ns)
      for (const isolated of variants) rows.push(await measure(n, idleS, outageS, isolated));
    return {
      rows,
      idle_s: idleS,
      note: "hub-and-spoke topology with the members bucket (this tree), the hub without and with leaf-interest isolation; the full-mesh code path is gone, its figures are the issue's",
    };
  },
};

/** The markdown of the case: one row per N. */
export function renderSites(r: SitesResult): string[] {
  const head = [
    "sites",
    "hub isolates leaf interest",
    "hub msgs/s idle",
    "hub bytes/s idle",
    "hub subs",
    "site subs (mean / max)",
    "idle CPU servers / services / per site (% core)",
    "one write → last site (ms, median of 5): bucket / its op in the FEED (NATS's own part)",
    "one write → second site, other sites' services stopped (ms)",
    "CPU of one lone write per site: services / server (ms)",
    "sites × that / cores (ms)",
    "uplink bytes per op (writer out / receiver in)",
    "catch-up after hub outage (ms)",
    "anti-entropy run first → last site (ms)",
  ];
  const rows = r.rows.map((x) =>
    x.error
      ? [x.sites, x.isolated ? "yes" : "no", `failed: ${x.error}`]
      : [
          x.sites,
          x.isolated ? "yes" : "no",
          x.hub_msgs_s_idle,
          x.hub_bytes_s_idle ?? "–",
          x.hub_subs,
          `${x.site_subs_mean} / ${x.site_subs_max}`,
          `${x.idle_cpu_servers_pct} / ${x.idle_cpu_services_pct} / ${x.idle_cpu_per_site_pct}`,
          `${x.write_to_last_site_ms} / ${x.write_to_last_feed_ms ?? "–"}`,
          x.write_to_site_alone_ms ?? "–",
          `${x.lone_op_cpu_services_ms ?? "–"} / ${x.lone_op_cpu_server_ms ?? "–"}`,
          x.host_bound_ms ?? "–",
          `${x.uplink_out_bytes_per_op} / ${x.uplink_in_bytes_per_op}`,
          x.outage_s > 0 ? `${x.catch_up_ms} (${x.outage_s} s outage)` : "not run",
          x.reconcile_error ? `failed: ${x.reconcile_error}` : (x.reconcile_ms ?? "–"),
        ],
  );
  return ["## 8. Sites: per-site and hub cost as the mesh grows", "", r.note, "", table(head, rows), ""];
}
