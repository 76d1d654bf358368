/**
 * I1 convergence, model-checked: 3-4 simulated replicas run the real `stampEntry` (watcher) and
 * `applyOp` (merger), 1-2 watcher and 1-3 merger instances each (I5), every store call one step of
 * a seeded scheduler. Users put and delete at every site, hand-made ops are injected (some with the
 * exact (ts, node_id) of an earlier op and other contents), ops reach the other replicas in any
 * order, some twice, some never; anti-entropy (the reconciler's version tree, plan and
 * readVersioned) repairs what was lost. At quiescence every replica must equal the model: per key
 * the greatest published op by lww.compare. Along the way: I2 (only local writes are published),
 * I3 (each local write published unless superseded by a newer local one), I4 (a stamp is above
 * every version the site held for the key, whatever the clock and its stale blocks).
 *
 * Replay a failure: FC_SEED=<seed> FC_RUNS=<n> (fast-check prints the seed and the path).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { makeOp } from "../services/lib/op.ts";
import { type MergeDeps, applyOp } from "../services/merger/handlers.ts";
import { fcParams } from "./fc.ts";
import { ManualSteps } from "./sim/sched.ts";
import { SimBucket, SimMeta } from "./sim/stores.ts";
import { BUCKET, type Scenario, type Stats, World, scenario } from "./sim/world.ts";

const RUNS = 100;

function sum(into: Partial<Stats>, s: Stats): void {
  for (const [k, v] of Object.entries(s) as [keyof Stats, number][]) into[k] = (into[k] ?? 0) + v;
}

function fail(w: World, bad: string[]): never {
  throw new Error(
    `${bad.length} violation(s):\n${bad.slice(0, 20).join("\n")}\nops published (the model):\n${w.describeModel()}`,
  );
}

async function run(sc: Scenario, s: fc.Scheduler, opts: { repair: boolean }, total: Partial<Stats>) {
  const w = new World(sc, s);
  w.start();
  await w.settle();
  const local = w.checkLocal();
  if (local.length > 0) fail(w, local);
  const dropped = w.stats.dropped > 0;
  // nothing lost: the op stream alone must converge
  if (!dropped) {
    const bad = w.checkConverged();
    if (bad.length > 0) fail(w, bad);
  }
  if (opts.repair) {
    await w.repair();
    const bad = [...w.checkLocal(), ...w.checkConverged()];
    if (bad.length > 0) fail(w, bad);
  }
  sum(total, w.tally());
}

describe("I1 I3 I4 I5 convergence model: simulated replicas running the real stamp and merge code", () => {
  it("I1 I2 I3 I4 I5: every op delivered in any order, some twice, to racing watchers and mergers → every replica equals the model", async (t) => {
    const total: Partial<Stats> = {};
    await fc.assert(
      fc.asyncProperty(scenario({ drops: false }), fc.scheduler(), (sc, s) =>
        run(sc, s, { repair: false }, total),
      ),
      fcParams({ numRuns: RUNS }),
    );
    t.diagnostic(`totals over the runs: ${JSON.stringify(total)}`);
    assert.ok((total.applied ?? 0) > 0 && (total.stale ?? 0) > 0 && (total.duplicate ?? 0) > 0);
  });

  it("I1 I3 I4 I5: ops dropped too, anti-entropy repair (reconciler version tree + plan) → every replica equals the model", async (t) => {
    const total: Partial<Stats> = {};
    await fc.assert(
      fc.asyncProperty(scenario({ drops: true }), fc.scheduler(), (sc, s) =>
        run(sc, s, { repair: true }, total),
      ),
      fcParams({ numRuns: RUNS }),
    );
    t.diagnostic(`totals over the runs: ${JSON.stringify(total)}`);
    assert.ok((total.dropped ?? 0) > 0 && (total.repaired ?? 0) > 0);
  });
});

describe("I1 I5 counterexamples found by the model, replayed step by step", () => {
  /**
   * Found by the property above (FC_SEED=1444258013, 3 merger instances, hand-made put at ts 0 and
   * a later delete of the same key). Two mergers of one site (or the consumer and the `merge`
   * endpoint the reconciler calls) apply a put P and a newer delete D of a key the bucket has never
   * held. D reads the bucket before P writes it and `_meta` after P committed: D's CAS over P
   * succeeds, and `if (!l && incoming.deleted) return applied` skips the bucket write on the stale
   * "no entry". `_meta` says D (tombstone) while the bucket keeps P's value, forever: every later
   * op older than D is stale, and anti-entropy compares `_meta` versions, which agree everywhere.
   */
  it("I1 a delete merged concurrently with an older put of a new key leaves the key absent", async () => {
    const steps = new ManualSteps();
    const meta = new SimMeta(steps.step, "site-b");
    const data = new SimBucket(steps.step, "site-b");
    const deps: MergeDeps = {
      buckets: new Map([[BUCKET, { meta: meta.as("merger"), data, maxValueSize: -1 }]]),
      observe: async () => {},
      checkSkew: () => {},
    };
    const key = "app.lang";
    const put = makeOp({
      bucket: BUCKET,
      key,
      ts: 10,
      nodeId: "site-a",
      deleted: false,
      value: new TextEncoder().encode("é"),
    });
    const del = makeOp({ bucket: BUCKET, key, ts: 20, nodeId: "site-c", deleted: true });

    const d = applyOp(deps, del); // merger 1: reads meta and the bucket at once
    await steps.release("latest"); // D: bucket has no entry
    const p = applyOp(deps, put); // merger 2
    await steps.release("meta.get", "last"); // P: no version
    await steps.release("latest", "last"); // P: no entry
    await steps.release("meta.cas"); // P commits
    await steps.release("write"); // P writes the bucket (rev 1)
    await steps.release("meta.get"); // D: meta = P, D wins
    await steps.release("meta.cas"); // D commits over P
    await steps.drain();
    assert.equal((await p).result, "applied");
    assert.equal((await d).result, "applied");

    assert.deepEqual(meta.peek(key), { ts: 20, node_id: "site-c", deleted: true, rev: 0 });
    const shown = data.contents().get(key);
    assert.equal(
      shown === undefined ? undefined : new TextDecoder().decode(shown),
      undefined,
      "_meta holds the tombstone 20/site-c but the bucket still shows the put 10/site-a",
    );
  });
});
