import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  HeldMap,
  type KeyVersion,
  VersionTree,
  descend,
  entryHash,
  leafOf,
  plan,
  treeSource,
} from "../services/mod.ts";
import { fcParams } from "./fc.ts";

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function version(r: () => number): { ts: number; node_id: string; deleted: boolean } {
  return {
    ts: 1_000_000 + Math.floor(r() * 1000),
    node_id: `site-${"abc"[Math.floor(r() * 3)]}`,
    deleted: r() < 0.2,
  };
}

function build(entries: Iterable<KeyVersion>, depth?: number): VersionTree {
  const t = new VersionTree(depth);
  for (const e of entries) t.set(e.key, e);
  return t;
}

/** Every node digest of a tree, level by level. */
function dump(t: VersionTree): string[] {
  const out: string[] = [];
  let frontier = [""];
  out.push(JSON.stringify(t.root()));
  while (frontier.length > 0) {
    const next: string[] = [];
    for (const p of frontier)
      for (const c of t.children(p)) {
        out.push(JSON.stringify(c));
        next.push(c.prefix);
      }
    frontier = next;
  }
  return out;
}

/** Expected root hash by definition: XOR of every entry hash. */
function xorAll(entries: KeyVersion[]): string {
  const acc = Buffer.alloc(32);
  for (const e of entries) {
    const h = entryHash(e.key, e);
    for (let i = 0; i < 32; i++) acc[i] = acc[i]! ^ h[i]!;
  }
  return acc.toString("hex");
}

describe("I1 anti-entropy: reconciler version tree", () => {
  it("an empty tree has a zero root and no children", () => {
    const t = new VersionTree();
    assert.deepEqual(t.root(), { prefix: "", hash: "0".repeat(64), count: 0 });
    assert.deepEqual(t.children(""), []);
    assert.equal(t.size, 0);
  });

  it("the root is the XOR of sha256(key\\0ts\\0node_id\\0deleted) over the keys", () => {
    const r = rng(1);
    const entries = Array.from({ length: 500 }, (_, i) => ({ key: `k.${i}`, ...version(r) }));
    const t = build(entries);
    assert.equal(t.root().hash, xorAll(entries));
    assert.equal(t.root().count, 500);
  });

  it("incremental updates and deletes equal a rebuild", () => {
    const r = rng(2);
    const t = new VersionTree();
    const truth = new Map<string, KeyVersion>();
    for (let step = 0; step < 20_000; step++) {
      const key = `app/${Math.floor(r() * 2000)}`;
      if (r() < 0.15) {
        assert.equal(t.delete(key), truth.delete(key));
      } else {
        const v = { key, ...version(r) };
        t.set(key, v);
        truth.set(key, v);
      }
    }
    const rebuilt = build(truth.values());
    assert.deepEqual(dump(t), dump(rebuilt));
    assert.equal(t.size, truth.size);
    for (const [k, v] of truth)
      assert.deepEqual(t.get(k), { ts: v.ts, node_id: v.node_id, deleted: v.deleted });
  });

  it("is independent of insertion order", () => {
    const r = rng(3);
    const entries = Array.from({ length: 3000 }, (_, i) => ({ key: `x${i}`, ...version(r) }));
    const shuffled = [...entries];
    for (let i = shuffled.length - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
    }
    assert.deepEqual(dump(build(entries)), dump(build(shuffled)));
    // an intermediate version overwritten later leaves no trace
    const t = build(shuffled);
    for (const e of entries.slice(0, 100)) t.set(e.key, { ...e, ts: e.ts + 7 });
    for (const e of entries.slice(0, 100)) t.set(e.key, e);
    assert.deepEqual(dump(t), dump(build(entries)));
  });

  it("a leaf is the first hex chars of sha256(key)", async () => {
    const { createHash } = await import("node:crypto");
    for (const k of ["a", "app/theme", "ключ", "x.y.z"]) {
      const hex = createHash("sha256").update(k).digest("hex");
      assert.equal(leafOf(k, 4), Number.parseInt(hex.slice(0, 4), 16));
      assert.equal(leafOf(k, 3), Number.parseInt(hex.slice(0, 3), 16));
    }
  });

  it("entries lists each key under overlapping prefixes once, and pages with a cursor", () => {
    const r = rng(4);
    const entries = Array.from({ length: 5000 }, (_, i) => ({ key: `p${i}`, ...version(r) }));
    const t = build(entries);
    const all = [...t.entries(["", "a", "0f"])];
    assert.equal(all.length, 5000);
    assert.equal(new Set(all.map((e) => e.key)).size, 5000);
    const pages: KeyVersion[] = [];
    let after: string | undefined;
    for (;;) {
      const page: KeyVersion[] = [];
      for (const e of t.entries(["", "a"], after)) {
        page.push(e);
        if (page.length === 333) break;
      }
      if (page.length === 0) break;
      pages.push(...page);
      after = page[page.length - 1]!.key;
    }
    assert.deepEqual(pages, all);
    const underA = [...t.entries(["a"])];
    for (const e of underA) assert.equal(leafOf(e.key) >> 12, 10);
    // a deleted cursor key still resumes at the right place
    const mid = all[2500]!;
    t.delete(mid.key);
    assert.deepEqual([...t.entries([""], mid.key)], all.slice(2501));
  });
});

describe("I1 anti-entropy: reconciler descent", () => {
  async function diff(a: VersionTree, b: VersionTree, smallCount?: number) {
    const d = await descend(a, treeSource(b), smallCount === undefined ? {} : { smallCount });
    const p = plan(a.entries(d.list), b.entries(d.list));
    return { d, p, moved: new Set([...p.pull, ...p.push]) };
  }

  it("equal trees: one root comparison, nothing to list", async () => {
    const r = rng(5);
    const entries = Array.from({ length: 2000 }, (_, i) => ({ key: `k${i}`, ...version(r) }));
    const { d, p } = await diff(build(entries), build([...entries].reverse()));
    assert.deepEqual(d, { list: [], ranges: 0 });
    assert.deepEqual(p, { pull: [], push: [], unhashed: [], compared: 0 });
  });

  for (const [n, k] of [
    [10, 1],
    [5000, 1],
    [5000, 7],
    [20_000, 40],
    [3000, 3000],
  ] as const) {
    it(`two trees of ${n} keys differing in ${k} keys: the descent finds exactly those`, async () => {
      const r = rng(n + k);
      const base = Array.from({ length: n }, (_, i) => ({ key: `cfg/${i}`, ...version(r) }));
      const a = build(base);
      const b = build(base);
      const differing = new Set<string>();
      const pull = new Set<string>();
      const push = new Set<string>();
      while (differing.size < k) {
        const i = Math.floor(r() * n * 1.1);
        const key = `cfg/${i}`;
        if (differing.has(key)) continue;
        differing.add(key);
        const cur = a.get(key);
        const kind = r();
        if (!cur) {
          // only one side has it
          const v = version(r);
          if (kind < 0.5) {
            a.set(key, v);
            push.add(key);
          } else {
            b.set(key, v);
            pull.add(key);
          }
        } else if (kind < 0.4) {
          b.set(key, { ...cur, ts: cur.ts + 1 });
          pull.add(key);
        } else if (kind < 0.7) {
          a.set(key, { ...cur, ts: cur.ts + 5, node_id: "site-z" });
          push.add(key);
        } else if (kind < 0.85) {
          // same (ts, node_id), different deleted flag: the tombstone wins
          b.set(key, { ...cur, deleted: !cur.deleted });
          (cur.deleted ? push : pull).add(key);
        } else {
          b.delete(key);
          push.add(key);
        }
      }
      const { d, p, moved } = await diff(a, b);
      assert.deepEqual(moved, differing);
      assert.deepEqual(new Set(p.pull), pull);
      assert.deepEqual(new Set(p.push), push);
      assert.equal(p.pull.length + p.push.length, k);
      if (k <= 40) {
        // cost follows the difference: per differing key at most one path of nodes and one leaf's keys
        assert.ok(d.ranges <= k * (4 + 1) + 1, `ranges ${d.ranges}`);
        assert.ok(p.compared <= k * 16 * 2, `compared ${p.compared}`);
      }
      // and the reverse direction sees the mirror image
      const back = await diff(b, a);
      assert.deepEqual(new Set(back.p.pull), push);
      assert.deepEqual(new Set(back.p.push), pull);
    });
  }

  it("a tree against an empty one lists everything", async () => {
    const r = rng(9);
    const entries = Array.from({ length: 1000 }, (_, i) => ({ key: `z${i}`, ...version(r) }));
    const { p } = await diff(build(entries), new VersionTree());
    assert.equal(p.push.length, 1000);
    assert.equal(p.pull.length, 0);
  });

  it("stops descending at small nodes when asked to", async () => {
    const r = rng(10);
    const entries = Array.from({ length: 40 }, (_, i) => ({ key: `s${i}`, ...version(r) }));
    const a = build(entries);
    const b = build(entries);
    b.set("s3", { ...a.get("s3")!, ts: a.get("s3")!.ts + 1 });
    const deep = await diff(a, b, 0);
    assert.equal(deep.d.list[0]!.length, 4);
    assert.equal(deep.p.compared, 1);
    const shallow = await diff(a, b, 64);
    assert.deepEqual(shallow.d.list, [""]);
    assert.equal(shallow.p.compared, 40);
    assert.deepEqual(shallow.p.pull, ["s3"]);
  });

  it("equal versions with different value hashes: found by the descent, moved both ways", async () => {
    const r = rng(11);
    const entries = Array.from({ length: 3000 }, (_, i) => {
      const v = version(r);
      return { key: `h${i}`, ...v, ...(v.deleted ? {} : { vh: (i * 7919).toString(16).padStart(16, "0") }) };
    });
    const a = build(entries);
    const b = build(entries);
    const put = entries.find((e) => !e.deleted)!;
    b.set(put.key, { ...put, vh: "f".repeat(16) });
    const { d, p } = await diff(a, b);
    assert.ok(d.list.length > 0);
    assert.deepEqual(p.pull, [put.key]);
    assert.deepEqual(p.push, [put.key]);
    assert.deepEqual(p.unhashed, []);
  });
});

describe("I1 anti-entropy: reconciler value hashes (vh)", () => {
  const v = { ts: 5, node_id: "site-a", deleted: false };
  const sha = async (s: string) => (await import("node:crypto")).createHash("sha256").update(s).digest("hex");

  it("an entry hash covers vh; without one (or for a tombstone) it is the hash older code used", async () => {
    assert.equal(entryHash("k", v).toString("hex"), await sha("k\u00005\u0000site-a\u0000false"));
    assert.equal(
      entryHash("k", { ...v, vh: "0123456789abcdef" }).toString("hex"),
      await sha("k\u00005\u0000site-a\u0000false\u00000123456789abcdef"),
    );
    const del = { ...v, deleted: true };
    assert.equal(
      entryHash("k", { ...del, vh: "0123456789abcdef" }).toString("hex"),
      entryHash("k", del).toString("hex"),
    );
  });

  it("the tree keeps vh: a change of vh alone changes the digest; a tombstone drops it", () => {
    const t = new VersionTree();
    assert.equal(t.set("k", { ...v, vh: "00000000000000aa" }), true);
    const before = t.root().hash;
    assert.deepEqual(t.get("k"), { ...v, vh: "00000000000000aa" });
    assert.equal(t.set("k", { ...v, vh: "00000000000000aa" }), false);
    assert.equal(t.set("k", { ...v, vh: "00000000000000bb" }), true);
    assert.notEqual(t.root().hash, before);
    assert.equal(t.set("k", { ...v, vh: "00000000000000aa" }), true);
    assert.equal(t.root().hash, before);
    t.set("k", { ...v, deleted: true, vh: "00000000000000aa" });
    assert.deepEqual(t.get("k"), { ...v, deleted: true });
    assert.deepEqual([...t.entries([""])], [{ key: "k", ...v, deleted: true }]);
    // an entry without vh lists without the key (not vh: undefined)
    t.set("j", v);
    assert.deepEqual(Object.keys(t.get("j")!), ["ts", "node_id", "deleted"]);
  });

  it("plan: equal versions, both hashed and different → both ways; one side unhashed → neither, listed as unhashed", () => {
    const k = (key: string, vh?: string, deleted = false) => ({ key, ...v, deleted, ...(vh ? { vh } : {}) });
    const p = plan(
      [
        k("same", "00000000000000aa"),
        k("diff", "00000000000000aa"),
        k("mine-legacy"),
        k("their-legacy", "00000000000000aa"),
        k("both-legacy"),
        k("tomb", undefined, true),
      ],
      [
        k("same", "00000000000000aa"),
        k("diff", "00000000000000bb"),
        k("mine-legacy", "00000000000000aa"),
        k("their-legacy"),
        k("both-legacy"),
        k("tomb", undefined, true),
      ],
    );
    assert.deepEqual(p.pull, ["diff"]);
    assert.deepEqual(p.push, ["diff"]);
    assert.deepEqual(p.unhashed, ["mine-legacy", "their-legacy"]);
    assert.equal(p.compared, 6);
    // a tombstone still beats a put of the same version, whatever the hashes
    const t = plan([k("x", "00000000000000aa")], [k("x", undefined, true)]);
    assert.deepEqual([t.pull, t.push], [["x"], []]);
  });
});

describe("I1 anti-entropy: the compact version tree (law)", () => {
  /** Every node digest by definition: per prefix, the XOR of the entry hashes of the keys below it. */
  function reference(
    model: Map<string, KeyVersion>,
    depth: number,
  ): Map<string, { hash: string; count: number }> {
    const acc = new Map<string, { h: Buffer; count: number }>();
    for (const [key, v] of model) {
      const leaf = leafOf(key, depth).toString(16).padStart(depth, "0");
      const h = entryHash(key, v);
      for (let l = 0; l <= depth; l++) {
        const p = leaf.slice(0, l);
        const a = acc.get(p) ?? { h: Buffer.alloc(32), count: 0 };
        for (let i = 0; i < 32; i++) a.h[i] = a.h[i]! ^ h[i]!;
        a.count++;
        acc.set(p, a);
      }
    }
    return new Map([...acc].map(([p, a]) => [p, { hash: a.h.toString("hex"), count: a.count }]));
  }

  const versionArb = fc.record({
    ts: fc.oneof(
      fc.nat({ max: 20 }),
      fc.constant(Number.MAX_SAFE_INTEGER),
      fc.integer({ min: 1e15, max: 2e15 }),
    ),
    node_id: fc.constantFrom("site-a", "site-b", "ä-site"),
    deleted: fc.boolean(),
    vh: fc.option(fc.oneof(fc.hexaString({ minLength: 16, maxLength: 16 }), fc.constant("not-hex")), {
      nil: undefined,
    }),
    lost: fc.option(fc.boolean(), { nil: undefined }),
  });
  const opArb = fc.record({
    key: fc.oneof(fc.string({ maxLength: 4 }), fc.constantFrom("k", "k.1", "k.2", "ü/ß")),
    v: fc.option(versionArb, { nil: null }),
  });

  it("I1 law: after any sets and deletes, every node digest, get and listing equal the definition (the old tree's)", () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 300 }), fc.integer({ min: 1, max: 3 }), (ops, depth) => {
        const t = new VersionTree(depth);
        const model = new Map<string, KeyVersion>();
        for (const { key, v } of ops) {
          if (v === null) {
            assert.equal(t.delete(key), model.delete(key));
            continue;
          }
          const vh = v.deleted ? undefined : v.vh;
          const norm: KeyVersion = {
            key,
            ts: v.ts,
            node_id: v.node_id,
            deleted: v.deleted,
            ...(vh !== undefined ? { vh } : {}),
            ...(!v.deleted && v.lost ? { lost: true } : {}),
          };
          const before = model.get(key);
          t.set(key, { ts: v.ts, node_id: v.node_id, deleted: v.deleted, vh: v.vh, lost: v.lost });
          model.set(key, norm);
          assert.deepEqual(t.get(key), (({ key: _k, ...rest }) => rest)(norm), `get ${key} (was ${before})`);
        }
        assert.equal(t.size, model.size);
        const ref = reference(model, depth);
        const got = dump(t).map((s) => JSON.parse(s) as { prefix: string; hash: string; count: number });
        const nonEmpty = [...ref].filter(([, a]) => a.count > 0);
        assert.equal(got.filter((n) => n.count > 0).length, nonEmpty.length);
        for (const n of got) {
          const want = ref.get(n.prefix) ?? { hash: "0".repeat(64), count: 0 };
          assert.deepEqual({ hash: n.hash, count: n.count }, want, `node "${n.prefix}"`);
        }
        const listed = [...t.entries([""])];
        assert.deepEqual(listed.map((e) => e.key).sort(), [...model.keys()].sort());
        for (const e of listed) assert.deepEqual(e, model.get(e.key));
      }),
      fcParams({ numRuns: 200 }),
    );
  });
});

it("I1 law: the compact held map answers as a Map of what the bucket holds", () => {
  const heldArb = fc.record({
    rev: fc.oneof(fc.nat(), fc.constant(Number.MAX_SAFE_INTEGER)),
    h: fc.oneof(fc.constant(""), fc.hexaString({ minLength: 16, maxLength: 16 }), fc.constant("odd")),
  });
  const opArb = fc.record({
    key: fc.constantFrom("a", "b", "c", "d"),
    held: fc.option(heldArb, { nil: null }),
  });
  fc.assert(
    fc.property(fc.array(opArb, { maxLength: 80 }), (ops) => {
      const m = new HeldMap();
      const model = new Map<string, { rev: number; h: string }>();
      for (const { key, held } of ops) {
        if (held === null) assert.equal(m.delete(key), model.delete(key));
        else {
          m.set(key, held);
          model.set(key, held);
        }
        assert.equal(m.size, model.size);
        for (const k of ["a", "b", "c", "d"]) assert.deepEqual(m.get(k), model.get(k), k);
        assert.deepEqual([...m.keys()].sort(), [...model.keys()].sort());
        assert.deepEqual(
          [...m.revs()].sort((x, y) => x - y),
          [...model.values()].map((h) => h.rev).sort((x, y) => x - y),
        );
      }
    }),
    fcParams({ numRuns: 300 }),
  );
});
