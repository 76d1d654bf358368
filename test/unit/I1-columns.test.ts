/**
 * I1 and I4 rest on what the compact per-key structures return: the `_meta` cache (EntryColumns,
 * read at stamp time for I4), the reconciler's version tree and its map of what the bucket holds
 * (I1 anti-entropy). All three keep their keys in services/lib/columns.ts (slots in typed-array
 * columns, value hashes as bytes, node ids interned); each must answer exactly as a plain Map of the
 * same operations would, whatever the order, the growth of the columns and the reuse of slots.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  Columns,
  EntryColumns,
  Hash8Column,
  HeldMap,
  Interner,
  type KeyVersion,
  type MetaEntry,
  type Version,
  VersionTree,
} from "../../services/mod.ts";
import { fcParams } from "../fc.ts";

const key = fc.constantFrom(...Array.from({ length: 40 }, (_, i) => `k${i}`));
const node = fc.constantFrom("a", "b", "site-c", "");
const hash8 = fc.oneof(
  fc.stringMatching(/^[0-9a-f]{16}$/),
  fc.constantFrom("ABCDEF0123456789", "short", "", "0123456789abcdef0"),
);
const version: fc.Arbitrary<Version> = fc.record(
  {
    ts: fc.oneof(fc.nat(), fc.constant(Number.MAX_SAFE_INTEGER)),
    node_id: node,
    deleted: fc.boolean(),
    rev: fc.nat(),
    merged: fc.boolean(),
    inc: fc.nat(),
    vh: fc.stringMatching(/^[0-9a-f]{16}$/),
  },
  { requiredKeys: ["ts", "node_id", "deleted", "rev"] },
);
/** versions the columns cannot hold as such (kept as they came) */
const oddVersion = fc.oneof(
  version.map((v) => ({ ...v, vh: "not-hex" })),
  version.map((v) => ({ ...v, extra: 1 }) as Version),
);
const entry: fc.Arbitrary<MetaEntry | null> = fc.oneof(
  fc.constant(null),
  fc.record({
    version: fc.oneof({ weight: 4, arbitrary: version }, { weight: 1, arbitrary: oddVersion }),
    revision: fc.nat(),
  }),
);

describe("I1 compact columns (services/lib/columns.ts)", () => {
  it("I1 a slot is never handed out twice while live, and growth keeps every column's contents", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.nat(3).map((n) => n > 0),
          { minLength: 600, maxLength: 1500 },
        ),
        (ops) => {
          const cols = new Columns();
          const a = cols.f64();
          const b = cols.u8(3);
          const live = new Map<number, number>();
          let n = 0;
          for (const alloc of ops) {
            if (alloc || live.size === 0) {
              const s = cols.alloc();
              assert.equal(live.has(s), false, `slot ${s} handed out twice`);
              n++;
              a.a[s] = n;
              b.a[s * 3 + 2] = n % 256;
              live.set(s, n);
            } else {
              const s = live.keys().next().value as number;
              live.delete(s);
              cols.release(s);
            }
          }
          assert.equal(cols.live, live.size);
          for (const [s, v] of live) {
            assert.equal(a.a[s], v);
            assert.equal(b.a[s * 3 + 2], v % 256);
          }
        },
      ),
      fcParams({ numRuns: 50 }),
    );
  });

  it("I1 a value hash reads back as it was set, hex or hand-made, and compares by content", () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(600), hash8), { maxLength: 200 }), hash8, (sets, other) => {
        const cols = new Columns();
        const h = new Hash8Column(cols);
        const model = new Map<number, string>();
        for (const [slot, v] of sets) {
          while (cols.capacity <= slot) cols.alloc();
          h.set(slot, v);
          model.set(slot, v);
        }
        for (const [slot, v] of model) {
          assert.equal(h.get(slot), v);
          assert.equal(h.equals(slot, v), true);
          assert.equal(h.equals(slot, other), other === v);
        }
      }),
      fcParams(),
    );
  });

  it("I1 interned node ids come back as the same strings, one id each", () => {
    fc.assert(
      fc.property(fc.array(fc.string(), { maxLength: 50 }), (names) => {
        const i = new Interner();
        const ids = names.map((n) => i.id(n));
        names.forEach((n, k) => {
          assert.equal(i.name(ids[k]!), n);
          assert.equal(i.id(n), ids[k]);
        });
        assert.equal(i.size, new Set(names).size);
        assert.throws(() => i.name(i.size), RangeError);
      }),
      fcParams(),
    );
  });

  it("I4 the _meta cache's columns answer as a Map in least-recently-used order (set, touch, evict)", () => {
    type Op = { t: "set"; k: string; e: MetaEntry | null } | { t: "touch"; k: string } | { t: "evict" };
    const op: fc.Arbitrary<Op> = fc.oneof(
      { weight: 5, arbitrary: fc.record({ t: fc.constant("set" as const), k: key, e: entry }) },
      { weight: 2, arbitrary: fc.record({ t: fc.constant("touch" as const), k: key }) },
      { weight: 1, arbitrary: fc.record({ t: fc.constant("evict" as const) }) },
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 300 }), (ops) => {
        const c = new EntryColumns();
        const m = new Map<string, MetaEntry | null>();
        for (const o of ops) {
          if (o.t === "set") {
            c.set(o.k, o.e);
            m.delete(o.k);
            m.set(o.k, o.e === null ? null : structuredClone(o.e));
          } else if (o.t === "touch") {
            c.touch(o.k);
            if (m.has(o.k)) {
              const e = m.get(o.k)!;
              m.delete(o.k);
              m.set(o.k, e);
            }
          } else {
            c.evictOldest();
            const first = m.keys().next();
            if (!first.done) m.delete(first.value);
          }
        }
        assert.equal(c.size, m.size);
        for (const k of ["k0", "k1", "k17", "k39", "absent"]) {
          assert.deepEqual(c.get(k), m.get(k));
          assert.equal(c.revisionOf(k), m.has(k) ? (m.get(k)?.revision ?? null) : undefined);
        }
        // the least recently used goes first
        for (const k of m.keys()) {
          c.evictOldest();
          assert.equal(c.get(k), undefined);
        }
        assert.equal(c.size, 0);
      }),
      fcParams(),
    );
  });

  it("I1 the map of what the bucket holds answers as a Map (markers, hex and hand-made hashes, slot reuse, count up to a revision)", () => {
    const held = fc.record({ rev: fc.nat(), h: fc.oneof(fc.constant(""), hash8) });
    fc.assert(
      fc.property(fc.array(fc.tuple(key, fc.option(held)), { maxLength: 300 }), (ops) => {
        const h = new HeldMap();
        const m = new Map<string, { rev: number; h: string }>();
        for (const [k, v] of ops) {
          if (v === null) assert.equal(h.delete(k), m.delete(k));
          else {
            h.set(k, v);
            m.set(k, v);
          }
        }
        assert.equal(h.size, m.size);
        for (const [k, v] of m) assert.deepEqual(h.get(k), v);
        assert.deepEqual([...h.keys()].sort(), [...m.keys()].sort());
        assert.deepEqual([...h.revs()].sort(), [...m.values()].map((v) => v.rev).sort());
        for (const upTo of [0, 1, 7, Number.MAX_SAFE_INTEGER]) {
          const revs = [...m.values()].map((v) => v.rev).filter((r) => r <= upTo);
          const want = {
            count: revs.length,
            minRev: revs.length ? Math.min(...revs) : Number.POSITIVE_INFINITY,
          };
          assert.deepEqual(h.countUpTo(upTo), want);
        }
      }),
      fcParams(),
    );
  });

  it("I1 the version tree answers as a Map, and its digests equal those of a tree built fresh from the result", () => {
    const info = fc.record(
      { ts: fc.nat(3), node_id: node, deleted: fc.boolean(), vh: hash8, lost: fc.boolean() },
      { requiredKeys: ["ts", "node_id", "deleted"] },
    );
    fc.assert(
      fc.property(fc.array(fc.tuple(key, fc.option(info)), { maxLength: 300 }), (ops) => {
        const t = new VersionTree(2);
        const m = new Map<string, KeyVersion>();
        for (const [k, v] of ops) {
          if (v === null) assert.equal(t.delete(k), m.delete(k));
          else {
            t.set(k, v);
            const kv: KeyVersion = { key: k, ts: v.ts, node_id: v.node_id, deleted: v.deleted };
            if (!v.deleted && v.vh !== undefined) kv.vh = v.vh;
            if (!v.deleted && v.lost) kv.lost = true;
            m.set(k, kv);
          }
        }
        const norm = (e: KeyVersion) => ({ ...e });
        assert.deepEqual([...t.all()].map(norm).sort(byKey), [...m.values()].sort(byKey));
        const fresh = new VersionTree(2);
        for (const e of m.values()) fresh.set(e.key, e);
        assert.deepEqual(t.root(), fresh.root());
        for (const p of ["", "0", "a", "f"]) assert.deepEqual(t.children(p), fresh.children(p));
      }),
      fcParams(),
    );
  });
});

function byKey(a: { key: string }, b: { key: string }): number {
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}
