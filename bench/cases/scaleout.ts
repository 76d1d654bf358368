/**
 * Case 4: scale-out. Case 1's syncd throughput with 1 vs 2 merger and watcher instances per site,
 * both measured here, one after the other, so the ratio comes from one run.
 */
import { kfmt, log, round } from "../lib/util.ts";
import { type SyncdRun, syncdThroughput } from "./throughput.ts";
import type { BenchContext, CaseDef } from "./types.ts";

export type ScaleResult = { one: SyncdRun; two: SyncdRun; speedup: number };

export const scaleCase: CaseDef = {
  name: "scaleout",
  title: "4. Scale-out: 1 vs 2 merger and watcher instances per site",
  async run(ctx: BenchContext): Promise<ScaleResult> {
    const n = ctx.quick ? 3_000 : 20_000;
    const one = await syncdThroughput("scaleout/1x", n);
    const two = await syncdThroughput("scaleout/2x", n, { merger: 2, watcher: 2 });
    const speedup = round(two.repl_ops_s / one.repl_ops_s, 2);
    log(`scaleout: 1x ${kfmt(one.repl_ops_s)}/s, 2x ${kfmt(two.repl_ops_s)}/s → ${speedup}×`);
    return { one, two, speedup };
  },
};
