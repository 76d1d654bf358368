/**
 * I1 extended (#12.5), the pure parts of tombstone collection: the hub sequence read from a FEED
 * message's `Nats-Stream-Source` header (both servers' forms), the two-phase barrier, and anti-entropy
 * treating a one-sided tombstone old enough to be collected as absence.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { headers } from "@nats-io/nats-core";
import fc from "fast-check";
import { type KeyVersion, type Phase, barrier, hubSeqOf, plan } from "../../services/mod.ts";
import { fcParams } from "../fc.ts";

describe("I1 tombstone collection rules", () => {
  it("the hub sequence of a FEED message: the SYNCD_HUB source, 2.9 and 2.10+ forms, the last one wins", () => {
    const h = headers();
    h.append("Nats-Stream-Source", "SYNCD_OPS_a:3f9a 17");
    h.append("Nats-Stream-Source", "SYNCD_HUB:6c2e 42");
    assert.equal(hubSeqOf(h), 42);
    const h2 = headers();
    h2.set("Nats-Stream-Source", "SYNCD_HUB:6c2e 7 > >");
    assert.equal(hubSeqOf(h2), 7);
    const h3 = headers();
    h3.set("Nats-Stream-Source", "SYNCD_OPS_a 9");
    assert.equal(hubSeqOf(h3), undefined);
    assert.equal(hubSeqOf(undefined), undefined);
  });

  it("the barrier: a hub sequence is safe only once every mark passed the hub's end seen after the marks passed it", () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(50), fc.nat(50)), { minLength: 1, maxLength: 30 }), (steps) => {
        // marks and the hub's end only grow; the end is read after the marks (l ≥ m)
        let m = 0;
        let l = 0;
        let history: Phase[] = [];
        const passes: Phase[] = [];
        for (const [dm, dl] of steps) {
          m += dm;
          l = Math.max(l + dl, m);
          const r = barrier(history, m, l);
          history = r.history;
          passes.push({ m, l });
          // safe ⇒ an earlier (or this) pass had every mark ≥ safe and now every mark ≥ its end
          if (r.safe > 0) assert.ok(passes.some((p) => p.m >= r.safe && p.l <= m));
          // and it is the greatest such
          for (const p of passes) if (p.l <= m) assert.ok(r.safe >= p.m);
        }
      }),
      fcParams(),
    );
    // a pass alone never makes its own end safe unless the marks are already there
    assert.equal(barrier([], 5, 9).safe, 0);
    const one = barrier([], 5, 9);
    assert.equal(barrier(one.history, 9, 12).safe, 5);
  });

  it("anti-entropy: a one-sided tombstone that counts as absence moves neither way; anything else still moves", () => {
    const tomb = (key: string, ts: number): KeyVersion => ({ key, ts, node_id: "n", deleted: true });
    const put = (key: string, ts: number): KeyVersion => ({ key, ts, node_id: "n", deleted: false, vh: "h" });
    const old = (v: KeyVersion) => v.deleted && v.ts < 100;
    const p = plan([tomb("a", 1), tomb("b", 500), put("c", 1)], [tomb("d", 2), tomb("e", 600)], old);
    assert.deepEqual(p.pull.sort(), ["e"]);
    assert.deepEqual(p.push.sort(), ["b", "c"]);
    // against a put, an old tombstone still wins and moves
    const q = plan([tomb("a", 50)], [put("a", 10)], old);
    assert.deepEqual(q.push, ["a"]);
    // without the predicate, one-sided tombstones move as before
    const r = plan([tomb("a", 1)], [tomb("d", 2)]);
    assert.deepEqual([r.pull, r.push], [["d"], ["a"]]);
  });
});
