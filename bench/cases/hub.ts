/**
 * Case "hub" (#11: what the hub needs at hundreds of sites): NATS's own layer of the star alone, at
 * more sites than case "sites" can run with services on one host. For N = 25, 50, 100 (quick 10, 25;
 * or BENCH_HUB_SITES=...) leaf sites with JetStream and no services: each site's op log, FEED and the
 * hub's aggregate are made by the services' own functions (ensureOutStream, ensureMergerStreams,
 * ensureHubRegistration), one op per site is published, then: the hub's msgs/s, bytes/s, CPU and RSS
 * while idle; one op → every site's FEED; and the hub stopped for BENCH_HUB_OUTAGE_S (default 10 s)
 * while every site publishes one op, then started again: time until every FEED holds all N of them
 * (the hub re-creating one source per site and every site's FEED source of it); then again with every
 * site re-arming both its sources at once as soon as the hub answers, as the services do (the herd).
 */
import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/nats-core";
import {
  Streams,
  createLogger,
  ensureHubRegistration,
  ensureMergerStreams,
  ensureOutStream,
  loadConfig,
  opsSubject,
  rearmSource,
} from "../../services/mod.ts";
import { startMesh } from "../../test/harness/mesh.ts";
import { cpuDelta, cpuSnapshot, rssMb } from "../lib/procstat.ts";
import { type Varz, getJson, log, pipelined, round, sleep, table, waitUntil } from "../lib/util.ts";
import type { BenchContext, CaseDef } from "./types.ts";

export type HubRow = {
  sites: number;
  setup_s: number;
  hub_msgs_s_idle: number;
  hub_bytes_s_idle: number;
  hub_cpu_pct_idle: number;
  hub_rss_mb: number;
  hub_subs: number;
  /** one op at the first site → the last FEED to hold it (ms) */
  op_to_last_feed_ms: number;
  outage_s: number;
  /** from the hub's start until every FEED holds the op each site published during the outage (ms) */
  catch_up_ms: number;
  /** the same, every site re-arming its two sources as the services do once the hub answers */
  catch_up_rearmed_ms?: number;
  /** the hub's CPU from its start until caught up (ms): without, with the herd */
  catch_up_hub_cpu_ms?: number;
  rearm_hub_cpu_ms?: number;
  /** the aggregate's entries lost to the herd's concurrent edits (added back by the next check) */
  herd_lost_entries?: number;
  error?: string;
};

export type HubResult = { rows: HubRow[]; idle_s: number };

/** A site's services' config with every default (what the streams and the hub's entry are made from). */
const configOf = (site: string) => loadConfig(["--site", site], {});

const quietLog = createLogger({ service: "bench", site: "-", instance: "hub", level: "silent" });

/** Wait until every site's FEED holds an op of every site on `key`, logging progress every 10 s. */
async function allFeedsHold(ncs: Map<string, NatsConnection>, key: string, n: number): Promise<void> {
  let logged = Date.now();
  await waitUntil(
    `every FEED holds every site's op on ${key}`,
    async () => {
      let done = 0;
      for (const [site, nc] of ncs) {
        const si = await (await jetstreamManager(nc)).streams.info(Streams.in(site), {
          subjects_filter: opsSubject("*", "config", key),
        });
        if (Object.keys(si.state.subjects ?? {}).length >= n) done++;
      }
      if (Date.now() - logged > 10_000) {
        logged = Date.now();
        log(`hub: ${done}/${ncs.size} FEEDs hold every site's op on ${key}`);
      }
      return done === ncs.size;
    },
    600_000,
    500,
  );
}

async function measure(n: number, idleS: number, outageS: number): Promise<HubRow> {
  const sites = Array.from({ length: n }, (_, i) => `h${String(i + 1).padStart(3, "0")}`);
  const row: HubRow = {
    sites: n,
    setup_s: 0,
    hub_msgs_s_idle: 0,
    hub_bytes_s_idle: 0,
    hub_cpu_pct_idle: 0,
    hub_rss_mb: 0,
    hub_subs: 0,
    op_to_last_feed_ms: 0,
    outage_s: outageS,
    catch_up_ms: 0,
  };
  const t0 = performance.now();
  log(`hub: starting ${n} leaf sites (no services)`);
  const mesh = await startMesh({ sites, services: false });
  const ncs = new Map<string, NatsConnection>();
  try {
    for (const s of sites) ncs.set(s, await mesh.connect(s));
    log(`hub: ${n} sites started; making the streams and the hub's sources`);
    await pipelined(sites.length, 8, async (i) => {
      const s = sites[i]!;
      const nc = ncs.get(s)!;
      const config = configOf(s);
      const jsm = await jetstreamManager(nc);
      await ensureOutStream(jsm, config, 1, quietLog);
      await ensureMergerStreams(jsm, config, 1, quietLog);
      await jetstream(nc).publish(opsSubject(s, "config", "first"), JSON.stringify({ site: s }));
    });
    // one at a time: the services' periodic check restores an entry a concurrent write dropped, this has none
    for (const s of sites) await ensureHubRegistration(ncs.get(s)!, configOf(s), quietLog);
    await allFeedsHold(ncs, "first", n);
    row.setup_s = round((performance.now() - t0) / 1000);
    log(`hub: ${n} sites linked in ${row.setup_s} s`);

    const hubPid = mesh.topology.hub.pid!;
    const hubUrl = mesh.topology.hub.httpUrl;
    await sleep(3000);
    const v0 = await getJson<Varz>(`${hubUrl}/varz`);
    const c0 = cpuSnapshot([hubPid]);
    await sleep(idleS * 1000);
    const v1 = await getJson<Varz>(`${hubUrl}/varz`);
    const d = cpuDelta(c0, cpuSnapshot([hubPid]));
    const s = d.wall_ms / 1000;
    row.hub_msgs_s_idle = round((v1.in_msgs + v1.out_msgs - v0.in_msgs - v0.out_msgs) / s, 1);
    row.hub_bytes_s_idle = round((v1.in_bytes + v1.out_bytes - v0.in_bytes - v0.out_bytes) / s, 0);
    row.hub_cpu_pct_idle = round((100 * (d.byPid.get(hubPid) ?? 0)) / d.wall_ms, 2);
    row.hub_rss_mb = round(rssMb(hubPid));
    row.hub_subs = v1.subscriptions;

    // one op → every FEED, seen by consumers made before it
    const subject = opsSubject(sites[0]!, "config", "one");
    const iters = await Promise.all(
      sites.map(async (site) =>
        (
          await jetstream(ncs.get(site)!).consumers.get(Streams.in(site), {
            filter_subjects: [subject],
            deliver_policy: DeliverPolicy.New,
          })
        ).consume(),
      ),
    );
    const tw = performance.now();
    await jetstream(ncs.get(sites[0]!)!).publish(subject, JSON.stringify({ one: true }));
    const arrived = await Promise.all(
      iters.map(async (it) => {
        for await (const _ of it) break;
        return performance.now();
      }),
    );
    for (const it of iters) await it.close();
    row.op_to_last_feed_ms = round(Math.max(...arrived) - tw);

    if (outageS > 0) {
      /** stop the hub, one op per site, start it; `after` once it runs; ms until every FEED holds them, and the hub's CPU meanwhile */
      const outage = async (key: string, after: () => Promise<void>) => {
        await mesh.stopHub();
        await pipelined(sites.length, 8, (i) =>
          jetstream(ncs.get(sites[i]!)!).publish(opsSubject(sites[i]!, "config", key), "{}"),
        );
        await sleep(outageS * 1000);
        const th = performance.now();
        await mesh.startHub();
        const c = cpuSnapshot([mesh.topology.hub.pid!]);
        await after();
        await allFeedsHold(ncs, key, n);
        const cpu = cpuDelta(c, cpuSnapshot([mesh.topology.hub.pid!])).byPid.get(mesh.topology.hub.pid!);
        return { ms: round(performance.now() - th), cpu: round(cpu ?? 0) };
      };
      const plain = await outage("outage", async () => {});
      row.catch_up_ms = plain.ms;
      row.catch_up_hub_cpu_ms = plain.cpu;
      // the services' herd once the hub answers, every site with ops to send: each watcher re-arms
      // its log's source at the hub (two edits of the aggregate's source list), each merger its
      // FEED; entries lost to concurrent edits are added back as a watcher's next check does
      const herd = await outage("outage2", async () => {
        const hubJsm = await jetstreamManager(await mesh.connectHub());
        await waitUntil(
          "the hub's JetStream answers",
          () => hubJsm.streams.info(Streams.hub).then(() => true),
          60_000,
          200,
        );
        await Promise.all(
          sites.map(async (site) => {
            await rearmSource(hubJsm, Streams.hub, Streams.out(site)).catch(() => false);
            await rearmSource(await jetstreamManager(ncs.get(site)!), Streams.in(site), Streams.hub).catch(
              () => false,
            );
          }),
        );
        const have = new Set((await hubJsm.streams.info(Streams.hub)).config.sources?.map((x) => x.name));
        const lost = sites.filter((site) => !have.has(Streams.out(site)));
        row.herd_lost_entries = lost.length;
        for (const site of lost) await ensureHubRegistration(ncs.get(site)!, configOf(site), quietLog);
      });
      row.catch_up_rearmed_ms = herd.ms;
      row.rearm_hub_cpu_ms = herd.cpu;
    }
    log(`hub: ${n} → ${JSON.stringify(row)}`);
  } catch (err) {
    row.error = (err as Error).message;
    log(`hub: ${n} failed: ${row.error}`);
  } finally {
    for (const nc of ncs.values()) await nc.close().catch(() => {});
    await mesh.stop().catch(() => {});
  }
  return row;
}

export const hubCase: CaseDef = {
  name: "hub",
  title: "9. The hub at hundreds of sites (NATS's own layer, no services)",
  async run(ctx: BenchContext): Promise<HubResult> {
    const ns = (process.env.BENCH_HUB_SITES ?? (ctx.quick ? "10,25" : "25,50,100"))
      .split(",")
      .map((x) => Number(x.trim()))
      .filter((x) => Number.isInteger(x) && x >= 2);
    const idleS = ctx.quick ? 10 : 20;
    const outageS = Number(process.env.BENCH_HUB_OUTAGE_S ?? 10);
    const rows: HubRow[] = [];
    for (const n of ns) rows.push(await measure(n, idleS, outageS));
    return { rows, idle_s: idleS };
  },
};

/** The markdown of the case: one row per N. */
export function renderHub(r: HubResult): string[] {
  const head = [
    "sites",
    "linked in (s)",
    "hub msgs/s idle",
    "hub bytes/s idle",
    "hub CPU idle (% core)",
    "hub RSS (MB)",
    "hub subs",
    "one op → last FEED (ms)",
    "catch-up after hub outage (ms)",
    "the hub's CPU meanwhile (ms)",
    "the same, every site re-arming at once (ms) / the hub's CPU (ms) / entries lost to the herd",
  ];
  const rows = r.rows.map((x) =>
    x.error
      ? [x.sites, `failed: ${x.error}`]
      : [
          x.sites,
          x.setup_s,
          x.hub_msgs_s_idle,
          x.hub_bytes_s_idle,
          x.hub_cpu_pct_idle,
          x.hub_rss_mb,
          x.hub_subs,
          x.op_to_last_feed_ms,
          x.outage_s > 0 ? `${x.catch_up_ms} (${x.outage_s} s outage)` : "not run",
          x.catch_up_hub_cpu_ms ?? "–",
          `${x.catch_up_rearmed_ms ?? "–"} / ${x.rearm_hub_cpu_ms ?? "–"} / ${x.herd_lost_entries ?? "–"}`,
        ],
  );
  return [`## ${hubCase.title}`, "", `idle window ${r.idle_s} s`, "", table(head, rows), ""];
}
