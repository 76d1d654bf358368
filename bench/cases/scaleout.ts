/**
 * Case 4: scale-out. Case 1's syncd throughput with 1 vs 2 merger and watcher instances per site,
 * measured here back to back and, in full mode, twice in alternation (1, 2, 1, 2) so that a burst of
 * other work on the shared host does not decide the ratio alone; the medians make the speed-up. The
 * CPU per op of the watchers and mergers (summed over instances) is the steadier comparison.
 */
import { kfmt, log, median, round } from "../lib/util.ts";
import { type SyncdRun, syncdThroughput } from "./throughput.ts";
import type { BenchContext, CaseDef } from "./types.ts";

export type ScaleResult = {
  /** runs in the order measured */
  one_runs: SyncdRun[];
  two_runs: SyncdRun[];
  one_ops_s: number;
  two_ops_s: number;
  speedup: number;
  /** CPU µs per op summed over the instances: a's watchers, b's mergers (medians over the runs) */
  cpu_us_per_op: { one: { watcher: number; merger: number }; two: { watcher: number; merger: number } };
};

function cpuOf(r: SyncdRun, kind: "watcher" | "merger", site: string): number {
  return r.cpu.filter((c) => c.kind === kind && c.site === site).reduce((a, c) => a + c.us_per_op, 0);
}

export const scaleCase: CaseDef = {
  name: "scaleout",
  title: "4. Scale-out: 1 vs 2 merger and watcher instances per site",
  async run(ctx: BenchContext): Promise<ScaleResult> {
    const n = ctx.quick ? 3_000 : 15_000;
    const reps = ctx.quick ? 1 : 2;
    const one: SyncdRun[] = [];
    const two: SyncdRun[] = [];
    for (let r = 1; r <= reps; r++) {
      one.push(await syncdThroughput(`scaleout/1x#${r}`, n));
      two.push(await syncdThroughput(`scaleout/2x#${r}`, n, { merger: 2, watcher: 2 }));
    }
    const oneOps = median(one.map((x) => x.repl_ops_s));
    const twoOps = median(two.map((x) => x.repl_ops_s));
    const speedup = round(twoOps / oneOps, 2);
    const cpu = (runs: SyncdRun[]) => ({
      watcher: round(median(runs.map((x) => cpuOf(x, "watcher", "a")))),
      merger: round(median(runs.map((x) => cpuOf(x, "merger", "b")))),
    });
    log(`scaleout: 1x ${kfmt(oneOps)}/s, 2x ${kfmt(twoOps)}/s → ${speedup}× (medians of ${reps})`);
    return {
      one_runs: one,
      two_runs: two,
      one_ops_s: oneOps,
      two_ops_s: twoOps,
      speedup,
      cpu_us_per_op: { one: cpu(one), two: cpu(two) },
    };
  },
};
