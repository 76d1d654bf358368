/**
 * I5 scale-out (DESIGN §4): with several instances of every service per site (three mergers, two
 * watchers, two clocks sharing one durable consumer / one queue group / one persisted clock), a
 * write workload of concurrent writers on three sites over an overlapping key set ends with
 * I1–I4 holding — checked against the ops every site actually published — and the instances
 * really shared the work. And an anti-entropy run against a site with two reconciler instances
 * moves every difference in one run, whichever instance answers each request of its descent.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type ReconcilerRunResponse, ServiceName, endpointSubject, requestJson } from "../services/mod.ts";
import { plantVersion, quiet, withLinkedMesh } from "./helpers.ts";
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
    scale: "merger=3,watcher=2,clock=2,reconciler=2",
    serviceArgs: ["--reconcile-interval", "0"],
    readyTimeoutMs: 60_000,
    linkTimeoutMs: 30_000,
  });

  /** Digest and entries requests each reconciler instance of a site has answered, in instance id order. */
  const requestsAt = async (site: string) =>
    (await collectStats(nc.a!, ServiceName.reconciler))
      .filter((s) => s.metadata?.site === site)
      .sort((x, y) => x.id.localeCompare(y.id))
      .map((s) =>
        s.endpoints
          .filter((e) => e.name === "digest" || e.name === "entries")
          .reduce((n, e) => n + e.num_requests, 0),
      );

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

  it("I1 one anti-entropy run against a site with two reconcilers moves every difference: each request of the descent is answered from an index at least as new as the root's", async () => {
    // NATS spreads a queue group's requests at random: rounds until the requests of one run were
    // answered by both instances (a round of 3+ requests splits with probability >= 3/4)
    let split = 0;
    for (let round = 0; round < 8 && split < 2; round++) {
      // written at b behind the services' back (no op): only anti-entropy can move them
      const keys = Array.from({ length: 300 }, (_, i) => `i5.ae.${round}.${i}`);
      const ts = Date.now() * 1000;
      await Promise.all(
        keys.map((key, i) =>
          plantVersion(nc.b!, { key, ts: ts + i, node_id: "site-b", deleted: false, value: `v${i}` }),
        ),
      );
      const before = await requestsAt("b");
      const { value } = await requestJson<ReconcilerRunResponse>(
        nc.a!,
        endpointSubject("a", "reconciler", "run"),
        { peers: ["b"] },
        { timeout: 60_000 },
      );
      const run = value.runs.find((r) => r.peer === "b" && r.bucket === "config");
      assert.ok(run, JSON.stringify(value));
      assert.equal(
        run.pulled,
        keys.length,
        `round ${round}: one run pulls every planted key: ${JSON.stringify(run)}`,
      );
      const answered = (await requestsAt("b")).map((n, i) => n - (before[i] ?? 0));
      assert.equal(answered.length, 2, "STATS of b's 2 reconcilers");
      console.log(
        `# round ${round}: b's reconcilers answered ${answered} digest and entries requests of the run`,
      );
      if (answered.every((n) => n > 0)) split++;
    }
    assert.ok(split >= 2, "no two runs whose requests both of b's reconcilers answered");
  });
});
