/**
 * I5 scale-out (DESIGN §4): with several instances of every service per site (three mergers, two
 * watchers, two clocks sharing one durable consumer / one queue group / one persisted clock), a
 * write workload of concurrent writers on three sites over an overlapping key set ends with
 * I1–I4 holding — checked against the ops every site actually published — and the instances
 * really shared the work.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ServiceName } from "../services/mod.ts";
import { quiet, withLinkedMesh } from "./helpers.ts";
import {
  type MicroStats,
  checkOutcome,
  collectStats,
  keySet,
  runWorkload,
  seedFromEnv,
  soakMs,
} from "./workload.ts";

const SITES = ["a", "b", "c"];

/** Per instance of a site: the STATS `data` of one endpoint. */
function dataOf(stats: MicroStats[], site: string, endpoint: string): Record<string, unknown>[] {
  return stats
    .filter((s) => s.metadata?.site === site)
    .map((s) => s.endpoints.find((e) => e.name === endpoint)?.data)
    .filter((d): d is Record<string, unknown> => typeof d === "object" && d !== null);
}
const num = (v: unknown) => (typeof v === "number" ? v : 0);

describe("I5 scale-out: several instances of each service per site", () => {
  // anti-entropy off: convergence must come from the op streams alone
  const { nc } = withLinkedMesh({
    sites: SITES,
    scale: "merger=3,watcher=2,clock=2",
    serviceArgs: ["--reconcile-interval", "0"],
    readyTimeoutMs: 60_000,
    linkTimeoutMs: 30_000,
  });

  it("I5 concurrent writers on every site, 3 mergers + 2 watchers + 2 clocks per site: converged, nothing lost, no echo, work shared", async () => {
    const seed = seedFromEnv("WORKLOAD_SEED");
    const w = await runWorkload({
      ncs: nc,
      keys: keySet("i5", 40),
      writersPerSite: 4,
      durationMs: soakMs(5000),
      maxWritesPerSite: 3000,
      minWritesPerSite: 50,
      seed,
    });
    const t0 = Date.now();
    await quiet(nc, { timeout: 60_000 });
    const report = await checkOutcome({ ncs: nc, writes: w.writes });
    console.log(
      `# ${w.writes.length} writes in ${w.elapsedMs} ms, quiet after ${Date.now() - t0} ms; ops published ${JSON.stringify(report.opsPerSite)}; final ${report.keys} keys, ${report.tombstones} tombstones`,
    );
    assert.deepEqual(report.problems, [], `seed ${seed}\n${report.problems.join("\n")}`);
    assert.ok(w.writes.length >= SITES.length * 50, `too few writes to mean anything: ${w.writes.length}`);

    // The instances shared the work: per site, more than one merger applied ops and more than one
    // watcher published local writes (STATS data = that instance's own counts).
    const mergers = await collectStats(nc.a!, ServiceName.merger);
    const watchers = await collectStats(nc.a!, ServiceName.watcher);
    const clocks = await collectStats(nc.a!, ServiceName.clock);
    for (const s of SITES) {
      const m = dataOf(mergers, s, "merge").map((d) => num(d.applied) + num(d.stale) + num(d.duplicate));
      const wt = dataOf(watchers, s, "status").map((d) => {
        const c = (d.config ?? {}) as Record<string, unknown>;
        return num(c.published) + num(c.skipped_superseded) + num(c.skipped_echo);
      });
      const ck = dataOf(clocks, s, "tick").map((d) => num(d.ticks) + num(d.observed));
      console.log(
        `# site ${s}: ops per merger ${m}, entries per watcher ${wt}, ticks+observes per clock ${ck}`,
      );
      assert.equal(m.length, 3, `site ${s}: STATS of 3 mergers`);
      assert.equal(wt.length, 2, `site ${s}: STATS of 2 watchers`);
      assert.equal(ck.length, 2, `site ${s}: STATS of 2 clocks`);
      assert.ok(m.filter((x) => x > 0).length >= 2, `site ${s}: only one merger processed ops: ${m}`);
      assert.ok(wt.filter((x) => x > 0).length >= 2, `site ${s}: only one watcher processed entries: ${wt}`);
      assert.ok(ck.filter((x) => x > 0).length >= 2, `site ${s}: only one clock answered: ${ck}`);
    }
  });
});
