import {
  type BenchMesh,
  linked,
  processes,
  quiet,
  startBenchMesh,
  stopQuietly,
  warmUp,
} from "../lib/mesh.ts";
import { cpuDelta, cpuOf, cpuSnapshot, rssOf } from "../lib/procstat.ts";
import { kfmt, log, nowMs, pipelined, round, sleep, value100, withProgress } from "../lib/util.ts";
import { indexHolds, loadSite, prepareLoad } from "./reconcile.ts";
import { WINDOW } from "./throughput.ts";
import type { BenchContext, CaseDef, ProcCpu, ProcRss } from "./types.ts";

const KEYSET = 1000;
/** Seconds idle after the catch-up before RSS is taken again (services/agent/idle-gc.ts acts within ~10 s). */
const SETTLE_S = 20;

export type FootprintRound = {
  ops_total: number;
  ops_s: number;
  rss: ProcRss[];
  cpu: ProcCpu[];
};

export type FootprintResult = {
  idle: ProcRss[];
  keyset: number;
  ops_per_round: number;
  rounds: FootprintRound[];
  /** growth is measured from the round that ended at this op count to the last round */
  growth_from_ops: number;
  /** per process: (RSS after the last round − after the middle round) per 10 000 ops */
  growth_mb_per_10k_ops: { site: string; name: string; kind: string; mb: number }[];
  /** the one-process variant (absent in results of runs before it existed) */
  agent?: AgentFootprint;
  /** each service in its own process at K keys per site (absent in results of runs before it existed) */
  alone?: LoadedFootprint;
};

/** RSS of each site's agent process (the four services in one process). */
export type AgentFootprint = {
  idle: ProcRss[];
  keys_per_site: number;
  at_k: ProcRss[];
  /** seconds from starting the agents on the loaded sites until caught up */
  ready_s: number;
};

const serviceRss = (bm: BenchMesh): ProcRss[] =>
  rssOf(processes(bm).filter((p) => p.kind !== "nats-server" && p.kind !== "hub"));

/** RSS of the service processes at K keys per site: one agent per site, or one process per service. */
export type LoadedFootprint = {
  keys_per_site: number;
  at_k: ProcRss[];
  /** RSS after SETTLE_S seconds idle (the agent gives back the heap the catch-up grew); absent in older results */
  settled?: ProcRss[];
  /** seconds from starting the services on the loaded sites until caught up */
  ready_s: number;
};

/**
 * K keys per site loaded directly (as in case 5), then the services started on them (one agent per
 * site, or each service alone) and caught up: the `_meta` cache and the reconciler's version index
 * hold K keys. RSS of every service process.
 */
export async function loadedFootprint(quick: boolean, agent: boolean): Promise<LoadedFootprint> {
  const K = quick ? 10_000 : 100_000;
  const what = agent ? "agents" : "services";
  let bm: BenchMesh | undefined;
  try {
    log(`footprint/${what}: loading ${kfmt(K)} keys per site directly, then starting the ${what}`);
    bm = await startBenchMesh({ services: false, agent });
    await prepareLoad(bm);
    const base = (Date.now() - 3_600_000) * 1000;
    const bmm = bm;
    await Promise.all(bm.sites.map((s) => loadSite(bmm.conn[s]!.nc, K, base, () => {})));
    const t0 = nowMs();
    await Promise.all(bm.sites.map((s) => bmm.mesh.startServices(s)));
    await linked(bm, 300_000);
    await quiet(bm, 300_000);
    for (const s of bm.sites) await indexHolds(bmm, s, K);
    const readyS = round((nowMs() - t0) / 1000);
    await sleep(1000);
    const atK = serviceRss(bm);
    log(
      `footprint/${what}: at ${kfmt(K)} keys RSS ${atK.map((p) => `${p.site}/${p.name} ${p.rss_mb}`).join(", ")} MB`,
    );
    await sleep(SETTLE_S * 1000);
    const settled = serviceRss(bm);
    log(
      `footprint/${what}: ${SETTLE_S} s later RSS ${settled.map((p) => `${p.site}/${p.name} ${p.rss_mb}`).join(", ")} MB`,
    );
    return { keys_per_site: K, at_k: atK, settled, ready_s: readyS };
  } finally {
    await stopQuietly(bm);
  }
}

/** The one-process variant: idle after the warm-up, then at K keys per site. */
export async function agentFootprint(quick: boolean): Promise<AgentFootprint> {
  let bm: BenchMesh | undefined;
  let idle: ProcRss[];
  try {
    log("footprint/agent: starting hub + sites a, b with one agent process per site");
    bm = await startBenchMesh({ agent: true });
    await warmUp(bm, "a", `warm.${Date.now()}`);
    await sleep(2000);
    idle = serviceRss(bm);
    log(`footprint/agent: idle RSS ${idle.map((p) => `${p.site}/${p.name} ${p.rss_mb}`).join(", ")} MB`);
  } finally {
    await stopQuietly(bm);
  }
  const loaded = await loadedFootprint(quick, true);
  return { idle, ...loaded };
}

export const footprintCase: CaseDef = {
  name: "footprint",
  title: "6. Footprint: RSS idle and as ops accumulate, CPU per op",
  async run(ctx: BenchContext): Promise<FootprintResult> {
    const rounds = ctx.quick ? 4 : 8;
    const m = ctx.quick ? 1_000 : 5_000;
    let bm: BenchMesh | undefined;
    try {
      log("footprint: starting hub + sites a, b with services");
      bm = await startBenchMesh();
      const procs = processes(bm);
      const rss = (): ProcRss[] => rssOf(procs);
      await warmUp(bm, "a", `warm.${Date.now()}`);
      await sleep(2000);
      const idle = rss();
      log(
        `footprint: idle RSS ${idle
          .filter((p) => p.kind !== "nats-server" && p.kind !== "hub")
          .map((p) => `${p.site}/${p.name} ${p.rss_mb}`)
          .join(", ")} MB`,
      );
      const out: FootprintRound[] = [];
      const a = bm.conn.a!;
      let total = 0;
      for (let r = 0; r < rounds; r++) {
        let done = 0;
        const s0 = cpuSnapshot(procs.map((p) => p.pid));
        const t0 = nowMs();
        const bmm = bm;
        await withProgress(
          `footprint/round ${r + 1}/${rounds}`,
          () => `${done}/${m} puts`,
          async () => {
            await pipelined(m, WINDOW, (i) =>
              a.kv.put(`fp.${(r * m + i) % KEYSET}`, value100(`r${r}.${i}`)).then(() => void done++),
            );
            await quiet(bmm, 300_000);
          },
        );
        const ms = nowMs() - t0;
        const d = cpuDelta(s0, cpuSnapshot(procs.map((p) => p.pid)));
        total += m;
        out.push({
          ops_total: total,
          ops_s: Math.round(m / (ms / 1000)),
          rss: rss(),
          cpu: cpuOf(procs, d, m),
        });
        log(`footprint: ${kfmt(total)} ops, ${kfmt(out[r]!.ops_s)} ops/s applied`);
      }
      // growth over the second half of the rounds: the first rounds also grow the heaps to their working size
      const from = out[Math.floor((out.length - 1) / 2)]!;
      const last = out[out.length - 1]!;
      const growth = from.rss.map((p, i) => ({
        site: p.site,
        name: p.name,
        kind: p.kind,
        mb: round(
          (((last.rss[i]?.rss_mb ?? Number.NaN) - p.rss_mb) / (last.ops_total - from.ops_total)) * 10_000,
          2,
        ),
      }));
      const growthFrom = from.ops_total;
      await stopQuietly(bm);
      bm = undefined;
      const agent = await agentFootprint(ctx.quick);
      const alone = await loadedFootprint(ctx.quick, false);
      return {
        idle,
        keyset: KEYSET,
        ops_per_round: m,
        rounds: out,
        growth_from_ops: growthFrom,
        growth_mb_per_10k_ops: growth,
        agent,
        alone,
      };
    } finally {
      await stopQuietly(bm);
    }
  },
};
