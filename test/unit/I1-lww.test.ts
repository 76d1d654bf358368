/** I1 (the rule itself): the LWW merge is commutative, associative, idempotent and a total order. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  type Versioned,
  compare,
  compareBytes,
  compareVersions,
  merge,
  valueHash,
  wins,
} from "../../services/mod.ts";
import { fcParams } from "../fc.ts";

const enc = new TextEncoder();
// Small domains so that equal ts / node_id / values collide often.
const versioned: fc.Arbitrary<Versioned> = fc.record({
  ts: fc.integer({ min: 0, max: 5 }),
  node_id: fc.constantFrom("site-a", "site-b", "site-c", "a", "é"),
  deleted: fc.boolean(),
  value: fc.constantFrom("", "x", "y", "dark", "light").map((s) => enc.encode(s)),
});
const same = (a: Versioned, b: Versioned) => compare(a, b) === 0;

describe("I1 LWW merge laws", () => {
  it("higher ts wins; equal ts → higher node_id (bytes)", () => {
    assert.ok(compareVersions({ ts: 13, node_id: "a" }, { ts: 12, node_id: "z" }) > 0);
    assert.ok(compareVersions({ ts: 12, node_id: "site-b" }, { ts: 12, node_id: "site-a" }) > 0);
    assert.ok(
      compareVersions({ ts: 12, node_id: "Z" }, { ts: 12, node_id: "a" }) < 0,
      "byte order, not locale",
    );
    assert.equal(compareVersions({ ts: 1, node_id: "x" }, { ts: 1, node_id: "x" }), 0);
  });

  it("equal (ts, node_id): tombstone wins, then the greater value bytes", () => {
    const put = (v: string): Versioned => ({ ts: 5, node_id: "n", deleted: false, value: enc.encode(v) });
    const del: Versioned = { ts: 5, node_id: "n", deleted: true };
    assert.ok(compare(del, put("zzz")) > 0);
    assert.ok(compare(put("b"), put("a")) > 0);
    assert.ok(compare(put("ab"), put("a")) > 0);
    assert.equal(compare(put("a"), put("a")), 0);
  });

  it("an older put never beats a tombstone", () => {
    fc.assert(
      fc.property(versioned, versioned, (a, b) => {
        const del = { ...a, deleted: true };
        const older = { ...b, deleted: false, ts: del.ts - 1 };
        return !wins(older, del);
      }),
      fcParams(),
    );
  });

  it("commutative", () => {
    fc.assert(
      fc.property(versioned, versioned, (a, b) => same(merge(a, b), merge(b, a))),
      fcParams(),
    );
  });

  it("associative", () => {
    fc.assert(
      fc.property(versioned, versioned, versioned, (a, b, c) =>
        same(merge(merge(a, b), c), merge(a, merge(b, c))),
      ),
      fcParams(),
    );
  });

  it("idempotent", () => {
    fc.assert(
      fc.property(versioned, (a) => same(merge(a, a), a)),
      fcParams(),
    );
  });

  it("a total order: antisymmetric, transitive, and 0 only for identical contents", () => {
    fc.assert(
      fc.property(versioned, versioned, versioned, (a, b, c) => {
        const ab = compare(a, b);
        if (Math.sign(ab) !== -Math.sign(compare(b, a))) return false;
        if (ab === 0) {
          const sameContent =
            a.ts === b.ts &&
            a.node_id === b.node_id &&
            a.deleted === b.deleted &&
            (a.deleted || Buffer.compare(Buffer.from(a.value ?? []), Buffer.from(b.value ?? [])) === 0);
          if (!sameContent) return false;
        }
        if (ab <= 0 && compare(b, c) <= 0 && compare(a, c) > 0) return false;
        return true;
      }),
      fcParams(),
    );
  });

  it("any delivery order of any multiset of writes converges to the maximum", () => {
    fc.assert(
      fc.property(
        fc.array(versioned, { minLength: 1, maxLength: 12 }),
        fc.array(fc.nat(), { maxLength: 30 }),
        (ws, picks) => {
          const max = ws.reduce((m, w) => merge(m, w));
          // deliver in a shuffled order with duplicates
          const order = [...ws, ...picks.map((p) => ws[p % ws.length]!)];
          for (let i = order.length - 1; i > 0; i--) {
            const j = (picks[i % Math.max(1, picks.length)] ?? i) % (i + 1);
            [order[i], order[j]] = [order[j]!, order[i]!];
          }
          const state = order.reduce((s, w) => merge(s, w));
          return same(state, max);
        },
      ),
      fcParams(),
    );
  });

  it("the merge is the greater of the two (not just any law-abiding choice); wins: strictly greater, or nothing there", () => {
    fc.assert(
      fc.property(versioned, versioned, (a, b) => {
        const m = merge(a, b);
        return (
          (m === a || m === b) &&
          compare(m, a) >= 0 &&
          compare(m, b) >= 0 &&
          wins(a, b) === compare(a, b) > 0 &&
          wins(a, null) &&
          wins(a, undefined)
        );
      }),
      fcParams(),
    );
  });

  it("two tombstones of one version are the same write whatever bytes they carry", () => {
    const t = (v: string): Versioned => ({ ts: 1, node_id: "a", deleted: true, value: enc.encode(v) });
    assert.equal(compare(t("x"), t("y")), 0);
  });

  it("byte order: a proper prefix first; the value hash is SHA-256's first 8 bytes in hex", () => {
    const b = (...x: number[]) => new Uint8Array(x);
    assert.equal(compareBytes(b(1), b(1, 2)), -1);
    assert.equal(compareBytes(b(1, 2), b(1)), 1);
    assert.equal(compareBytes(b(2), b(1, 5)), 1);
    assert.equal(compareBytes(b(), b()), 0);
    assert.equal(valueHash(enc.encode("")), "e3b0c44298fc1c14");
    assert.equal(valueHash(enc.encode("abc")), "ba7816bf8f01cfea");
  });
});
