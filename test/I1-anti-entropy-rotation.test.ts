/**
 * I1 extended (#11.4): periodic anti-entropy takes one peer per round in a rotating order, so a
 * site's runs per period do not grow with N, and every peer comes up once in any N−1 consecutive
 * rounds (the convergence bound in README "Anti-entropy"); members that go are forgotten.
 */
import assert from "node:assert/strict";
import { it } from "node:test";
import fc from "fast-check";
import { Reconciler, type ReconcilerDeps } from "../services/mod.ts";
import { fcParams } from "./fc.ts";

/** A reconciler that is never started: nextPeer and the peer book touch no connection. */
function reconcilerOf(site: string): Reconciler {
  return new Reconciler({ site, tuning: { rate: 0 } } as unknown as ReconcilerDeps);
}

const members = (names: string[]) => new Map(names.map((n) => [n, { domain: n }]));

it("I1 rotation: every peer exactly once in any N−1 consecutive rounds, whatever joins and leaves between", () => {
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.stringMatching(/^[a-z][a-z0-9]{0,5}$/), { minLength: 2, maxLength: 20 }),
      fc.nat(),
      fc.nat({ max: 40 }),
      (names, selfIx, warm) => {
        const self = names[selfIx % names.length]!;
        const r = reconcilerOf(self);
        r.book.sync(members(names));
        const peers = names.filter((n) => n !== self).sort();
        for (let i = 0; i < warm; i++) r.nextPeer();
        const round = Array.from({ length: peers.length }, () => r.nextPeer());
        assert.deepEqual([...round].sort(), peers);
      },
    ),
    fcParams(),
  );
});

it("I1 rotation: a removed member is forgotten and never picked again; a joining one is", () => {
  const r = reconcilerOf("c");
  r.book.sync(members(["a", "b", "c", "d", "e"]));
  assert.deepEqual([r.nextPeer(), r.nextPeer(), r.nextPeer(), r.nextPeer()], ["a", "b", "d", "e"]);
  const removed = r.book.sync(members(["a", "c", "d", "e"]));
  assert.deepEqual(removed.removed, ["b"]);
  assert.deepEqual(r.book.sites(), ["a", "d", "e"]);
  const picks = Array.from({ length: 6 }, () => r.nextPeer());
  assert.ok(!picks.includes("b"));
  r.book.sync(members(["a", "c", "d", "e", "f"]));
  assert.ok(Array.from({ length: 4 }, () => r.nextPeer()).includes("f"));
  assert.equal(reconcilerOf("a").nextPeer(), undefined, "no peers: no periodic run");
});
