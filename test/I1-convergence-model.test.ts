/**
 * I1 convergence, model-checked: 3-4 simulated replicas run the real `stampEntry` (watcher) and
 * `applyOp` (merger), 1-2 watcher and 1-3 merger instances each (I5), every store call one step of
 * a seeded scheduler. Users put and delete at every site, hand-made ops are injected (some with the
 * exact (ts, node_id) of an earlier op and other contents), ops reach the other replicas in any
 * order, some twice, some never; anti-entropy (the reconciler's version tree, plan and
 * readVersioned) repairs what was lost. At quiescence every replica must equal the model: per key
 * the greatest published op by lww.compare. Along the way: I2 (only local writes are published),
 * I3 (each local write published unless superseded by a newer local one), I4 (a stamp is above
 * every version the site held for the key, whatever the clock and its stale blocks). Watchers and
 * mergers may read `_meta` through a bounded cache of 1-2 keys that never learns from other writers
 * (sim/cache.ts): no correctness rests on the cache (#12.5). Each instance coalesces the messages of
 * a key waiting behind a running one (#13: only the newest local write / greatest op runs, the others
 * are settled with it; a failed winner puts the whole batch back, as kill -9 does), and the ordered
 * publish takes its fast path (one fresh `_meta` read): at quiescence each site's compacted log must
 * end, for every key whose `_meta` holds a stamp of the site, with exactly that op (#11.2).
 *
 * Replay a failure: FC_SEED=<seed> FC_RUNS=<n> runs the same cases again and shrinks again;
 * FC_SEED=<seed> FC_PATH=<first number of the printed path> runs the failing case directly. (A
 * whole shrunk path does not replay: fast-check's scheduler shrinks depend on the run.)
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  Coalescer,
  KeyedGate,
  type MergeDeps,
  type Op,
  Outcome,
  VersionTree,
  type WatcherDeps,
  admit,
  applyOp,
  descend,
  greaterOp,
  makeOp,
  parseOp,
  plan,
  readVersioned,
  stampEntry,
  treeSource,
  valueHash,
} from "../services/mod.ts";
import { fcParams } from "./fc.ts";
import { type Call, ManualSteps, settle } from "./sim/sched.ts";
import { SimBucket, SimMeta, simOutLog } from "./sim/stores.ts";
import { BUCKET, type Scenario, type Stats, World, scenario } from "./sim/world.ts";

/**
 * Runs per property in CI. Measured (FC_SEED=1,2,3, FC_RUNS=2000-3000, one fix removed at a time;
 * "runs to the first failure" of properties 1 / 2 / 3):
 * - the delete-over-"no entry" shortcut back (`if (!l && incoming.deleted) return applied`):
 *   49/49/204, 118/58/21, 38/322/143;
 * - the stale-`_meta` guard off (`bucketAhead` ignored): 11/95/96, 19/1/170, 217/164/16;
 * - `pendingLocal` always false (the merger overwrites unstamped local writes): 1-10;
 * - the stamp without `_meta.ts + 1` (I4): 1-18;
 * - not found in 2000-3000 runs (proved by their replays only): the watcher's `merged` check on a
 *   re-publish, and the "unknown" (same version, bytes in flight) refusal.
 * The worst case seen is 322, so 400 runs find every measured one in each property; deeper:
 * `FC_RUNS=3000 TEST_FILTER=I1-convergence-model ./scripts/test.sh` (FC_SEED replays a seed).
 */
const RUNS = 400;
/** fast-check parameters: FC_SEED / FC_RUNS (test/fc.ts), and FC_PATH to run one case directly. */
const params = () =>
  fcParams<[Scenario, fc.Scheduler]>({
    numRuns: RUNS,
    ...(process.env.FC_PATH ? { path: process.env.FC_PATH } : {}),
  });

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
      fc.asyncProperty(scenario({ drops: false, faults: false }), fc.scheduler(), (sc, s) =>
        run(sc, s, { repair: false }, total),
      ),
      params(),
    );
    t.diagnostic(`totals over the runs: ${JSON.stringify(total)}`);
    assert.ok((total.applied ?? 0) > 0 && (total.stale ?? 0) > 0 && (total.duplicate ?? 0) > 0);
    // batches with several versions of one key happened, and the logs were checked
    assert.ok((total.coalesced ?? 0) > 0 && (total.logsChecked ?? 0) > 0);
  });

  it("I1 I3 I4 I5: ops dropped too, anti-entropy repair (reconciler version tree + plan) → every replica equals the model", async (t) => {
    const total: Partial<Stats> = {};
    await fc.assert(
      fc.asyncProperty(scenario({ drops: true, faults: false }), fc.scheduler(), (sc, s) =>
        run(sc, s, { repair: true }, total),
      ),
      params(),
    );
    t.diagnostic(`totals over the runs: ${JSON.stringify(total)}`);
    assert.ok((total.dropped ?? 0) > 0 && (total.repaired ?? 0) > 0);
  });

  it("I1 I3 I4 I5 I6: store calls fail before or after their effect, messages redelivered, msgID dedupe on or off → every replica equals the model", async (t) => {
    const total: Partial<Stats> = {};
    await fc.assert(
      fc.asyncProperty(scenario({ drops: true, faults: true }), fc.scheduler(), (sc, s) =>
        run(sc, s, { repair: true }, total),
      ),
      params(),
    );
    t.diagnostic(`totals over the runs: ${JSON.stringify(total)}`);
    assert.ok((total.faults ?? 0) > 0 && (total.republished ?? 0) > 0);
    // batches cut mid-way (the winner failed: nothing of the batch acked, all of it redelivered)
    assert.ok((total.batchesCut ?? 0) > 0);
  });
});

/** One site's stores and handlers, every call through `call`. */
function site(call: Call, name: string) {
  const meta = new SimMeta(call, name);
  const data = new SimBucket(call, name);
  const merge: MergeDeps = {
    buckets: new Map([[BUCKET, { meta: meta.as("merger"), data, maxValueSize: -1 }]]),
    observe: async () => {},
    checkSkew: () => {},
  };
  const published: Op[] = [];
  let clock = 0;
  const watcher: WatcherDeps = {
    site: name,
    nodeId: name,
    bucket: BUCKET,
    meta: meta.as("watcher"),
    tick: async () => ++clock,
    ...simOutLog(`SYNCD_OUT_${name}`, (_subject, data) => published.push(parseOp(data))),
  };
  /** stamp the entry at `rev` as the watcher's consumer would deliver it */
  const stamp = (rev: number) => {
    const e = data.at(rev)!;
    return stampEntry(watcher, { ...e, headers: e.version });
  };
  /** what a KV get shows */
  const shows = (key: string) => {
    const v = data.contents().get(key);
    return v === undefined ? undefined : dec.decode(v);
  };
  /** the ops the `merge` endpoint journaled to the site's IN stream, not yet consumed */
  const journal: Op[] = [];
  /**
   * The merger's `merge` endpoint (services/merger/service.ts): journal the op, then apply it
   * (with `deps`, e.g. a merger that dies half-way).
   */
  const mergeEndpoint = async (op: Op, deps: MergeDeps = merge) => {
    admit(deps, op);
    journal.push(op);
    return applyOp(deps, op);
  };
  /** the merger's durable consumer applies every journaled op */
  const consume = async () => {
    const out = [];
    for (const op of journal.splice(0)) out.push(await applyOp(merge, op));
    return out;
  };
  return { meta, data, merge, watcher, published, stamp, shows, journal, mergeEndpoint, consume };
}

const enc = new TextEncoder();
const dec = new TextDecoder();
const put = (key: string, ts: number, nodeId: string, value: string) =>
  makeOp({ bucket: BUCKET, key, ts, nodeId, deleted: false, value: enc.encode(value) });
const del = (key: string, ts: number, nodeId: string) =>
  makeOp({ bucket: BUCKET, key, ts, nodeId, deleted: true });
/** every call at once, in program order */
const direct: Call = async (_label, effect) => effect();

type Site = ReturnType<typeof site>;

/** The site's merge deps with a bucket whose write never happens (the process dies first). */
function dying(s: Site): MergeDeps {
  const b = s.merge.buckets.get(BUCKET)!;
  const data = {
    latest: (key: string) => b.data.latest(key),
    write: async () => {
      throw new Error("killed");
    },
  };
  return { ...s.merge, buckets: new Map([[BUCKET, { ...b, data }]]) };
}

/** A site's version tree, as its reconciler's index builds it from `_meta`. */
function treeOf(s: Site): VersionTree {
  const t = new VersionTree(2);
  for (const [k, v] of s.meta.snapshot()) t.set(k, v); // ts, node_id, deleted and vh
  return t;
}

/** The keys `to` would pull from `from` in a reconcile run (descend, then plan). */
async function toPull(to: Site, from: Site): Promise<string[]> {
  const mine = treeOf(to);
  const theirs = treeOf(from);
  const d = await descend(mine, treeSource(theirs));
  return plan(mine.entries(d.list), theirs.entries(d.list)).pull;
}

/**
 * The pull half of a reconcile run at `to` against `from`: every key to pull, read with its own
 * version at `from` (readVersioned) and sent to `to`'s `merge` endpoint (merging with `deps`).
 */
async function repairRun(to: Site, from: Site, deps: MergeDeps = to.merge): Promise<void> {
  for (const key of await toPull(to, from)) {
    const known = from.meta.peek(key) ?? undefined;
    const src = { meta: from.meta.as("reconciler"), data: from.data, nodeId: from.watcher.nodeId };
    const v = await readVersioned(src, key, known);
    assert.ok(v.ok, `${key} in flux at ${from.watcher.nodeId}`);
    const op = makeOp({
      bucket: BUCKET,
      key,
      ts: v.version.ts,
      nodeId: v.version.node_id,
      deleted: v.version.deleted,
      value: v.value,
    });
    await to.mergeEndpoint(op, deps);
  }
}

describe("I1 I5 I6 counterexamples found by the model, replayed step by step", () => {
  /**
   * Found by the first property (FC_SEED=1444258013 FC_RUNS=2000 at f3f31ab; fixed in d0ddba8).
   * Two mergers of one site (or the consumer and the `merge` endpoint the reconciler calls) apply a put P and a newer delete D of a
   * key the bucket has never held. D reads "no entry", P commits `_meta` and writes the bucket, D
   * reads `_meta` = P, wins, commits over P, and `if (!l && incoming.deleted) return applied`
   * skips the bucket write on the stale "no entry". `_meta` says D while the bucket keeps P's value
   * forever: later older ops are stale, and anti-entropy compares `_meta`, which agrees everywhere.
   * (The order of the two reads does not matter: D may also read both before P's bucket write.)
   */
  it("I1 a delete merged concurrently with an older put of a new key leaves the key absent", async () => {
    const steps = new ManualSteps();
    const b = site(steps.call, "site-b");
    // (the merger now reads _meta, then the bucket: the original order, bucket first, cannot happen;
    // this is the same race with the bucket read between P's commit and P's bucket write)
    const p = applyOp(b.merge, put("k", 10, "site-a", "é")); // merger 1
    await steps.release("meta.get"); // P: no version
    await steps.release("latest"); // P: no entry
    await steps.release("meta.cas"); // P commits
    const d = applyOp(b.merge, del("k", 20, "site-c")); // merger 2
    await steps.release("meta.get"); // D: meta = P
    await steps.release("latest"); // D: no entry yet (P's write in flight)
    await steps.release("meta.cas"); // D wins and commits over P
    await steps.release("write k 10/site-a"); // P writes the bucket (rev 1): D's write must follow it
    await steps.drain();
    assert.equal((await p).result, "applied");
    assert.equal((await d).result, "applied");
    assert.deepEqual(b.meta.peek("k")?.ts, 20);
    assert.equal(
      b.shows("k"),
      undefined,
      "_meta holds the tombstone 20/site-c, the bucket the put 10/site-a",
    );
  });

  /**
   * Found by the first property on a local copy of the merger with the case above patched out
   * (FC_SEED=515566482 FC_RUNS=400 there; seeds replay only on the code they ran on). A delete X arrives twice (two merger instances, or a redelivery) and a newer put Y
   * once. X1 is applied. X2 reads `_meta` = X; Y commits and writes the bucket; X2 reads the bucket
   * = Y. For X2 the op equals `_meta` (cmp 0) and the bucket "does not hold it", so it "repairs"
   * the bucket: writes X's tombstone over Y with expected revision = Y's entry, which succeeds.
   * `_meta` says Y, the bucket says deleted. Same with a put of an empty value. The (meta, bucket)
   * pair read by Promise.all is not a snapshot, and the repair path has no CAS on `_meta`.
   */
  it("I1 a duplicate of an older op does not overwrite a newer value committed meanwhile", async () => {
    const steps = new ManualSteps();
    const b = site(steps.call, "site-a");
    const w = b.data.put("k", enc.encode("old")); // a stamped local write, so X writes a tombstone
    await steps.drain();
    await w;
    const s1 = b.stamp(1);
    await steps.drain();
    assert.equal(await s1, "published");
    const x = del("k", 10, "site-c");
    const x1 = applyOp(b.merge, x);
    await steps.drain(); // X applied: _meta X, bucket tombstone
    assert.equal((await x1).result, "applied");
    const x2 = applyOp(b.merge, x);
    await steps.release("meta.get"); // X2: _meta = X
    const y = applyOp(b.merge, put("k", 20, "site-b", "dark"));
    await steps.release("meta.get", "last"); // Y: _meta = X
    await steps.release("latest", "last"); // Y: the tombstone
    await steps.release("meta.cas"); // Y commits
    await steps.release("write"); // Y writes the bucket
    await steps.release("latest"); // X2: the bucket shows Y
    await steps.drain();
    assert.equal((await y).result, "applied");
    await x2;
    assert.equal(b.meta.peek("k")?.ts, 20);
    assert.equal(b.shows("k"), "dark", "_meta holds the put 20/site-b, the bucket X's tombstone 10/site-c");
  });

  /**
   * Found by the first property on a local copy of the merger with the shortcut removed and the two
   * reads made sequential, bucket first (FC_SEED=-1824593109 FC_RUNS=1100 there); on main the
   * concurrent reads of Promise.all allow the same order. A merger reads the bucket (a local write at rev 1, stamped) before the user
   * deletes the key (rev 2, stamped) and `_meta` after. It wins and commits `_meta` with
   * rev = l.rev = 1: `_meta`'s revision goes back. Its bucket write fails (rev 2 slipped in); the
   * retry sees `_meta`.rev 1 < 2 and takes the stamped delete for an unstamped local write "that will
   * be stamped above": stale, no write. Nobody stamps rev 2 again: the site keeps the key deleted
   * while every other site holds the op's value, and every later op is refused the same way.
   */
  it("I1 a merger does not move _meta's revision back over a stamped local write", async () => {
    const steps = new ManualSteps();
    const b = site(steps.call, "site-b");
    const w1 = b.data.put("k", enc.encode("a"));
    await steps.drain();
    await w1;
    const s1 = b.stamp(1);
    await steps.drain();
    assert.equal(await s1, "published");
    // (meta first, then the bucket, as the merger reads now: the bucket read is the newer one)
    const h = applyOp(b.merge, put("k", 30, "site-d", "h"));
    await steps.release("merger meta.get"); // the merger: _meta = rev 1 (local, stamped)
    const w2 = b.data.delete("k");
    await steps.release("user delete"); // rev 2
    await w2;
    const s2 = b.stamp(2);
    await steps.release("watcher meta.get");
    await steps.release("watcher meta.cas"); // stamped (2/site-b, DEL, rev 2)
    assert.equal(await s2, "published");
    await steps.release("latest"); // the merger: rev 2, the stamped delete
    await steps.drain(); // the merger wins; its commit must cover rev 2, its write must land
    await h;
    assert.equal(b.meta.peek("k")?.ts, 30);
    assert.equal(
      b.shows("k"),
      "h",
      `_meta holds 30/site-d at rev ${b.meta.peek("k")?.rev}, the bucket the stamped local delete (rev 2)`,
    );
  });

  /**
   * Found by the third property (faults) on a local copy of the merger with the cases above patched
   * (FC_SEED=-520244464 FC_RUNS=20 there). A merger commits op A over a stamped local write (rev 1) with rev = 1, then dies
   * before writing the bucket (kill -9, or the write's request is lost). The redelivered A reads
   * `_meta` = A (rev 1) and the local write at rev 1: bucketHolds says yes (l.rev >= m.rev), so the
   * local value is taken for A's; with A's bytes smaller it is "stale", else a "duplicate": nothing
   * is written. The bucket keeps the local value forever while `_meta` says A.
   */
  it("I1 I6 a merger killed between the _meta commit and the bucket write is repaired by redelivery", async () => {
    const b = site(direct, "site-b");
    await b.data.put("k", enc.encode("light"));
    assert.equal(await b.stamp(1), "published");
    const a = put("k", 20, "site-a", "dark");
    await assert.rejects(applyOp(dying(b), a), /killed/);
    const again = await applyOp(b.merge, a); // redelivered
    assert.equal(b.meta.peek("k")?.ts, 20);
    assert.equal(b.shows("k"), "dark", `redelivery said ${again.result}; the bucket kept the local value`);
  });

  /**
   * Found by reading the watcher next to the case above. A hand-made op with this site's node_id
   * overwrites a stamped local write: the merger commits it with rev = the local write's revision,
   * so when the consumer redelivers that entry, "meta.rev == e.rev and node_id == self" takes the
   * op for the watcher's own stamp and re-publishes the local value under the op's version:
   * contents nobody wrote, with an existing (ts, node_id). Within the dedupe window the msgID drops
   * it; after it (a long outage), peers take the greater bytes while this site keeps the other.
   */
  it("I2 I6 a re-published local write carries the version it was stamped with", async () => {
    const a = site(direct, "site-a");
    await a.data.put("k", enc.encode("zzz"));
    assert.equal(await a.stamp(1), "published");
    const first = a.published[0]!;
    await applyOp(a.merge, put("k", first.ts + 5, "site-a", "aaa")); // hand-made, node_id site-a
    assert.equal(a.shows("k"), "aaa");
    const again = await a.stamp(1); // the consumer redelivers rev 1 (ack lost)
    assert.equal(again, Outcome.superseded, "the merger's commit covers rev 1: nothing to re-publish");
    assert.deepEqual(a.published, [first], "the local value was re-published under another version");
  });

  /**
   * Found by the second property (FC_SEED=1387323141 FC_RUNS=1100 on a merger with the shortcut
   * patched out).
   * Two hand-made ops with the same (ts, node_id) and different values; the greater one is lost on
   * the way to site-b. Anti-entropy compared versions only (entryHash and plan: key, ts, node_id,
   * deleted), so the sites looked equal and site-b kept the smaller value forever. Now `_meta`
   * carries the value hash (vh), the tree hashes it and plan moves such a key both ways: each
   * side's merger keeps the greater value bytes.
   */
  it("I1 anti-entropy repairs equal versions with different contents", async () => {
    const a = site(direct, "site-a");
    const b = site(direct, "site-b");
    const h1 = put("k", 5, "hand", "dark");
    const h2 = put("k", 5, "hand", "light");
    await applyOp(a.merge, h1);
    await applyOp(a.merge, h2);
    await applyOp(b.merge, h1); // h2 lost on the way to site-b
    assert.equal(a.shows("k"), "light");
    assert.deepEqual(
      await toPull(b, a),
      ["k"],
      `site-b shows ${b.shows("k")}, site-a ${a.shows("k")}, both at 5/hand: the version trees are equal, nothing is pulled`,
    );
    assert.deepEqual(
      await toPull(a, b),
      ["k"],
      "and site-a pulls site-b's contents (its merger keeps its own)",
    );
    await repairRun(b, a);
    await repairRun(a, b);
    assert.equal(b.shows("k"), "light");
    assert.equal(a.shows("k"), "light");
    assert.deepEqual(await toPull(b, a), []);
    assert.equal(treeOf(a).root().hash, treeOf(b).root().hash);
  });

  /**
   * Found by the third property (faults) on a local copy with the merger cases patched and copied
   * hand-made versions off (so that the case above does not hide it).
   * The reconciler pulls a key and calls this site's `merge`; applyOp commits `_meta` and the
   * process dies (or the write times out) before the bucket write. The next run compares `_meta`
   * digests, which now agree: anti-entropy cannot see it. This test used to ask later anti-entropy
   * runs to repair it; the real system does not (and need not): the `merge` endpoint now journals
   * each op to the site's IN stream (`syncd.<site>.journal`) before applying it, and the merger's
   * durable consumer applies it again. Asserted here: the run that follows sees nothing to move,
   * and the consumer's delivery of the journaled op writes the bucket.
   */
  it("I1 I6 a merge that dies between the _meta commit and the bucket write is applied again from the journal", async () => {
    const a = site(direct, "site-a");
    const b = site(direct, "site-b");
    await applyOp(a.merge, put("k", 7, "site-c", "light"));
    // run 1: the endpoint journals the op, then dies after the commit
    await assert.rejects(repairRun(b, a, dying(b)), /killed/);
    assert.equal(b.journal.length, 1, "the op was journaled before it was applied");
    assert.equal(b.meta.peek("k")?.ts, 7);
    assert.equal(b.shows("k"), undefined);
    assert.deepEqual(await toPull(b, a), [], "anti-entropy sees equal _meta digests: nothing to move");
    // the merger's durable consumer delivers the journaled op (again after a restart: it was never acked)
    // its version already equals _meta's, so it reports "duplicate" — and repairs the bucket
    const r = await b.consume();
    assert.deepEqual(
      r.map((x) => x.result),
      ["duplicate"],
    );
    assert.equal(
      b.shows("k"),
      "light",
      `site-b's _meta says ${JSON.stringify(b.meta.peek("k"))}, its bucket nothing`,
    );
    // a merge that completes is applied twice (the direct call, then the consumer): a duplicate
    await a.data.put("k2", enc.encode("x"));
    assert.equal(await a.stamp(a.data.log.length), "published");
    await repairRun(b, a);
    assert.equal(b.shows("k2"), "x");
    assert.deepEqual(
      (await b.consume()).map((x) => x.result),
      ["duplicate"],
    );
  });

  /**
   * Found by reading values.ts next to the watcher case above ("a re-published local write carries
   * the version it was stamped with"). A hand-made op H with this site's node_id wins over a stamped
   * local write at rev 1: the merger commits `_meta` = {H, node_id: self, rev: 1, merged: true} and
   * dies before the bucket write. readVersioned took "meta.rev == entry rev and node_id == self" for
   * the watcher's own stamp and shipped the local value under H: contents nobody wrote with that
   * version, which the peers then keep by the greater-bytes tie-break.
   */
  it("I1 anti-entropy never ships a local write's value under a version a merger committed", async () => {
    const a = site(direct, "site-a");
    await a.data.put("k", enc.encode("zzz"));
    assert.equal(await a.stamp(1), "published");
    const h = put("k", a.published[0]!.ts + 5, "site-a", "aaa"); // hand-made, node_id site-a
    await assert.rejects(applyOp(dying(a), h), /killed/);
    assert.equal(a.meta.peek("k")?.merged, true);
    const src = { meta: a.meta.as("reconciler"), data: a.data, nodeId: "site-a" };
    const v = await readVersioned(src, "k", a.meta.peek("k")!);
    assert.deepEqual(
      v,
      { ok: false, reason: "in_flux" },
      `readVersioned shipped ${v.ok && v.value ? dec.decode(v.value) : "nothing"} as ${JSON.stringify(v.ok && v.version)}`,
    );
    await applyOp(a.merge, h); // redelivered: the bucket gets H's value
    const after = await readVersioned(src, "k", a.meta.peek("k")!);
    assert.ok(after.ok && after.version.ts === h.ts && dec.decode(after.value!) === "aaa");
  });

  /**
   * Found by the second and third properties with FC_RUNS=1000 once anti-entropy compared value
   * hashes (FC_SEED=107602530 and FC_SEED=1963375560 at a49f5d8: both shrink to two hand-made ops
   * with the same (ts, node_id) and different values at one site). Two mergers of site-a apply them
   * at once. L (the greater bytes) commits `_meta` with vh(L); D reads `_meta` = L and the bucket
   * before L's write lands: `currentState` has no value for L, so D is compared against empty
   * bytes, "wins", and commits vh(D) over vh(L). L's bucket write lands first; D's fails, and its
   * retry finds the bucket holding the version with L's bytes: stale. The bucket holds L, `_meta`
   * says D. A site that only got D has the same `_meta` digest, so anti-entropy never moves L
   * there: I1 divergence (seed 1963375560). Where the other sites hold L, the digests differ but
   * every merge is a duplicate and `_meta` is never corrected: the key is moved both ways on every
   * run forever (seed 107602530). A merger bug (services/merger), left failing here.
   */
  it("I1 a merger does not commit a smaller value's hash over an equal version whose bucket write is in flight", async () => {
    const steps = new ManualSteps();
    const a = site(steps.call, "site-a");
    const l = put("k", 1, "zz", "light");
    const d = put("k", 1, "zz", "dark");
    const pl = applyOp(a.merge, l); // merger 1
    await steps.release("meta.get"); // L: no version
    await steps.release("latest"); // L: no entry
    await steps.release("meta.cas"); // L commits vh(light)
    const pd = applyOp(a.merge, d).catch((err: unknown) => err); // merger 2
    await steps.release("meta.get"); // D: _meta = L
    await steps.release("latest"); // D: no entry yet: same version, other bytes, L's not readable
    await steps.release("write"); // L writes the bucket
    await steps.drain();
    await pl;
    // D could not be decided while L's bytes were in flight: refused as a conflict, nak'd, retried
    const first = await pd;
    assert.ok(
      first instanceof Error && /retry/.test(first.message),
      `D was decided blind: ${JSON.stringify(first)}`,
    );
    const again = applyOp(a.merge, d);
    await steps.drain();
    assert.equal((await again).result, "stale");
    assert.equal(a.shows("k"), "light");
    assert.equal(
      a.meta.peek("k")?.vh,
      valueHash(enc.encode("light")),
      `_meta says vh ${a.meta.peek("k")?.vh} (vh of "dark": ${valueHash(enc.encode("dark"))}), the bucket holds "light"`,
    );
    // the consequence: a site that only got D must see the difference (else it keeps "dark")
    const b = site(direct, "site-b");
    await applyOp(b.merge, d);
    assert.deepEqual(await toPull(b, a), ["k"], "the version trees of site-a and site-b are equal");
  });

  /**
   * #13 batching, step by step: while a key's op runs, three more of it wait behind it and coalesce
   * (the Coalescer the merger's consumer uses, with its choice of winner): only the greatest is
   * applied, the others are acked as stale after it. Then a batch whose winner dies between the
   * `_meta` commit and the bucket write (kill -9): nothing of it is acked; redelivered, the bucket
   * ends with the batch's greatest op.
   */
  it("I1 I6 a batch of one key's ops applies only the greatest and acks the rest after it; a batch cut by kill -9 acks nothing", async () => {
    const steps = new ManualSteps();
    const b = site(steps.call, "site-b");
    const acked: string[] = [];
    let kill = false;
    const gate = new Coalescer<Op>(
      new KeyedGate(8),
      (a, n) => (greaterOp({ op: a, handMade: false }, { op: n, handMade: false }) === "waiting" ? a : n),
      async (w, losers) => {
        const deps = kill ? dying(b) : b.merge;
        try {
          acked.push(`${w.ts}:${(await applyOp(deps, w)).result}`);
          for (const l of losers) acked.push(`${l.ts}:stale`);
        } catch {
          // killed: neither the winner nor its losers are acked (all of them come again)
        }
      },
    );
    void gate.submit("k", put("k", 1, "site-a", "v1"));
    await settle(); // it runs (waits on its first store call)
    for (const ts of [3, 5, 2]) void gate.submit("k", put("k", ts, "site-c", `v${ts}`));
    await steps.drain();
    assert.deepEqual(acked, ["1:applied", "5:applied", "3:stale", "2:stale"]);
    assert.equal(b.shows("k"), "v5");
    assert.equal(gate.coalesced, 2);
    // a batch cut by kill -9: 6 runs; 8 and 7 wait behind it (one batch, 8 wins) and die with 8
    void gate.submit("k", put("k", 6, "site-a", "v6"));
    await settle();
    void gate.submit("k", put("k", 8, "site-c", "v8"));
    void gate.submit("k", put("k", 7, "site-d", "v7"));
    kill = true; // for the batch that starts next
    await steps.drain();
    assert.deepEqual(acked.slice(4), ["6:applied"], "a batch whose winner died acked something");
    assert.equal(b.meta.peek("k")?.ts, 8, "the killed winner committed _meta");
    assert.equal(b.shows("k"), "v6", "and never wrote the bucket");
    // redelivered, in stream order
    kill = false;
    void gate.submit("k", put("k", 7, "site-d", "v7"));
    await settle();
    void gate.submit("k", put("k", 8, "site-c", "v8"));
    await steps.drain();
    assert.deepEqual(acked.slice(5), ["7:stale", "8:duplicate"]);
    assert.equal(b.shows("k"), "v8");
  });

  /**
   * Found by the first property (no drops, no faults, no repair) with FC_SEED=1963375560
   * FC_RUNS=1000 at a49f5d8 (on main, and again on a local copy of the merger with the case above
   * patched). A hand-made put P of an empty value and a delete X with the same (ts, node_id): X wins
   * (tombstone over value). A duplicate P2 of P reads `_meta` = P; X commits and writes its
   * tombstone; P2 reads the bucket = X's tombstone. The guard against a stale `_meta` read compares
   * versions only (equal here), `currentState` has no bytes for P (the bucket does not hold a put),
   * so P2 compares equal to "P with no bytes" (cmp 0) and "repairs" the bucket: writes P's empty
   * value over the tombstone, with no `_meta` compare-and-set on that path. `_meta` says X, the
   * bucket holds "". (With a non-empty value, P2 wins over "no bytes" and its `_meta` CAS fails.)
   * A merger bug (services/merger), left failing here.
   */
  it("I1 a duplicate of a put does not overwrite a tombstone of the same version committed meanwhile", async () => {
    const steps = new ManualSteps();
    const a = site(steps.call, "site-a");
    const p = put("k", 1, "site-a", "");
    const p1 = applyOp(a.merge, p);
    await steps.drain();
    assert.equal((await p1).result, "applied");
    const p2 = applyOp(a.merge, p); // a duplicate (another merger instance, or a redelivery)
    await steps.release("meta.get"); // P2: _meta = P
    const x = applyOp(a.merge, del("k", 1, "site-a"));
    await steps.release("meta.get", "last"); // X: _meta = P
    await steps.release("latest", "last"); // X: P's entry
    await steps.release("meta.cas"); // X commits (tombstone over value)
    await steps.release("write"); // X writes its tombstone
    await steps.release("latest"); // P2: the bucket shows X
    await steps.drain();
    assert.equal((await x).result, "applied");
    await p2;
    assert.equal(a.meta.peek("k")?.deleted, true);
    assert.equal(
      a.shows("k"),
      undefined,
      `_meta holds the tombstone 1/site-a, the bucket ${JSON.stringify(a.shows("k"))}`,
    );
  });
});
