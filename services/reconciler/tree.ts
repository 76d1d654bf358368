/**
 * The version tree of one bucket: a fixed-depth hash tree over the `<bucket>_meta` versions.
 *
 * A key lives in the leaf named by the first `depth` hex chars of sha256(key); a node is a hex prefix
 * (the root is ""), fan-out 16 per level. A node's digest is the XOR of the entry hashes
 * sha256(`key\0ts\0node_id\0deleted[\0vh]`) over the keys below it, and their count. XOR makes every
 * change O(depth): XOR out the old entry hash, XOR in the new one, on the leaf and its ancestors.
 *
 * `vh` (the value hash a put's version carries in `_meta`) is part of the entry hash, so two sites
 * holding equal versions with different contents (hand-made ops) differ; an entry without one (a
 * tombstone, or `_meta` written by older code) hashes as before. A put whose value the bucket does
 * not hold (`lost`, versions.ts) hashes with a `\0lost` suffix: a site that lost values differs
 * from one that holds them, so what the bucket holds enters the digest.
 *
 * Two sites compare roots, descend only into children whose digests differ, and list the keys of
 * small or leaf nodes: the cost follows the difference, not the bucket.
 */
import { createHash } from "node:crypto";
import { Columns, Hash8Column, Interner } from "../lib/columns.ts";
import { compareVersions } from "../lib/lww.ts";

/** Default tree depth: 4 hex chars → 65 536 leaves. */
export const TREE_DEPTH = 4;
const HASH_BYTES = 32;
const ZERO_HEX = "0".repeat(HASH_BYTES * 2);

/**
 * The part of a meta entry the tree keeps: the version, and the hash of a put's value (`vh`:
 * absent for a tombstone and in `_meta` written by older code).
 */
export type VersionInfo = {
  ts: number;
  node_id: string;
  deleted: boolean;
  vh?: string | undefined;
  /** a put whose value the bucket does not hold (versions.ts isLost): it hashes differently */
  lost?: boolean | undefined;
};

/** A node's digest as exchanged on the wire. */
export type NodeDigest = { prefix: string; hash: string; count: number };

/** A key with its version, as listed by `entries`. */
export type KeyVersion = VersionInfo & { key: string };

/** The leaf of a key: the first `depth` hex chars of sha256(key), as an integer. */
export function leafOf(key: string, depth: number = TREE_DEPTH): number {
  const d = createHash("sha256").update(key).digest();
  let v = 0;
  for (let i = 0; i < depth; i++) {
    const byte = d[i >> 1]!;
    v = v * 16 + (i % 2 === 0 ? byte >> 4 : byte & 15);
  }
  return v;
}

/**
 * The hash of one versioned key: sha256(`key\0ts\0node_id\0deleted`), with `\0vh` appended for a
 * put that has a value hash (so an entry without one hashes as older code hashed it).
 */
export function entryHash(key: string, v: VersionInfo): Buffer {
  const base = `${key}\0${v.ts}\0${v.node_id}\0${v.deleted}`;
  const withHash = v.vh === undefined || v.deleted ? base : `${base}\0${v.vh}`;
  return createHash("sha256")
    .update(v.lost && !v.deleted ? `${withHash}\0lost` : withHash)
    .digest();
}

/** True when a prefix is a valid node of a tree of this depth. */
export function isPrefix(p: string, depth: number = TREE_DEPTH): boolean {
  return p.length <= depth && /^[0-9a-f]*$/.test(p);
}

const F_DELETED = 1;
const F_VH = 2;
const F_LOST = 4;

/**
 * An in-memory version tree of one bucket, in compact columns (lib/columns.ts): per key a slot (ts,
 * interned node id, flags, the 8-byte value hash, the 32-byte entry hash, its leaf and the next key
 * of that leaf), plus the key itself (needed to list a differing leaf). About 130 bytes per key.
 */
export class VersionTree {
  readonly depth: number;
  private readonly offsets: number[];
  private readonly hashes: Uint8Array;
  private readonly counts: Uint32Array;
  private readonly heads: Int32Array;
  private readonly slots = new Map<string, number>();
  private readonly keyOf: (string | undefined)[] = [];
  private readonly cols = new Columns();
  private readonly ts = this.cols.f64();
  private readonly nodeIx = this.cols.u32();
  private readonly flags = this.cols.u8();
  private readonly vh = new Hash8Column(this.cols);
  private readonly eh = this.cols.u8(HASH_BYTES);
  private readonly leafOfSlot = this.cols.u32();
  /** the next key's slot in the same leaf, -1 at the end */
  private readonly next = this.cols.i32();
  private readonly nodes = new Interner();

  constructor(depth: number = TREE_DEPTH) {
    if (!Number.isInteger(depth) || depth < 1 || depth > 6)
      throw new Error(`tree depth ${depth} not in 1..6`);
    this.depth = depth;
    this.offsets = [];
    let total = 0;
    for (let l = 0; l <= depth; l++) {
      this.offsets.push(total);
      total += 16 ** l;
    }
    this.hashes = new Uint8Array(total * HASH_BYTES);
    this.counts = new Uint32Array(total);
    this.heads = new Int32Array(16 ** depth).fill(-1);
  }

  /** Number of keys (tombstones included). */
  get size(): number {
    return this.slots.size;
  }

  /** The version of a key, if indexed. */
  get(key: string): VersionInfo | undefined {
    const s = this.slots.get(key);
    return s === undefined ? undefined : this.info(s);
  }

  /**
   * Insert or update a key's version. Returns false when the version was already there. A
   * tombstone's `vh`, if any, is dropped (a tombstone has no contents).
   */
  set(key: string, v: VersionInfo): boolean {
    const vh = v.deleted ? undefined : v.vh;
    const fl =
      (v.deleted ? F_DELETED : 0) | (vh !== undefined ? F_VH : 0) | (!v.deleted && v.lost ? F_LOST : 0);
    const nid = this.nodes.id(v.node_id);
    let s = this.slots.get(key);
    const added = s === undefined;
    if (s !== undefined) {
      if (
        this.ts.a[s] === v.ts &&
        this.nodeIx.a[s] === nid &&
        this.flags.a[s] === fl &&
        (vh === undefined || this.vh.equals(s, vh))
      )
        return false;
      this.apply(this.leafOfSlot.a[s]!, this.eh.a.subarray(s * HASH_BYTES, (s + 1) * HASH_BYTES), 0);
    } else {
      s = this.cols.alloc();
      this.slots.set(key, s);
      this.keyOf[s] = key;
      const leaf = leafOf(key, this.depth);
      this.leafOfSlot.a[s] = leaf;
      this.next.a[s] = this.heads[leaf]!;
      this.heads[leaf] = s;
    }
    this.ts.a[s] = v.ts;
    this.nodeIx.a[s] = nid;
    this.flags.a[s] = fl;
    if (vh === undefined) this.vh.clear(s);
    else this.vh.set(s, vh);
    const h = entryHash(key, {
      ts: v.ts,
      node_id: v.node_id,
      deleted: v.deleted,
      vh,
      lost: (fl & F_LOST) !== 0,
    });
    this.eh.a.set(h, s * HASH_BYTES);
    this.apply(this.leafOfSlot.a[s]!, h, added ? 1 : 0);
    return true;
  }

  /** Remove a key. Returns false when it was not indexed. */
  delete(key: string): boolean {
    const s = this.slots.get(key);
    if (s === undefined) return false;
    this.slots.delete(key);
    const leaf = this.leafOfSlot.a[s]!;
    const next = this.next.a;
    if (this.heads[leaf] === s) this.heads[leaf] = next[s]!;
    else {
      let p = this.heads[leaf]!;
      while (next[p] !== s) p = next[p]!;
      next[p] = next[s]!;
    }
    this.apply(leaf, this.eh.a.subarray(s * HASH_BYTES, (s + 1) * HASH_BYTES), -1);
    this.keyOf[s] = undefined;
    this.vh.clear(s);
    this.cols.release(s);
    return true;
  }

  /** The digest of one node (count 0 and a zero hash when empty). */
  node(prefix: string): NodeDigest {
    const i = this.nodeIndex(prefix);
    if (this.counts[i] === 0) return { prefix, hash: ZERO_HEX, count: 0 };
    return { prefix, hash: this.hashHex(i), count: this.counts[i]! };
  }

  /** The root's digest. */
  root(): NodeDigest {
    return this.node("");
  }

  /** The non-empty children of a node, in prefix order; none for a leaf. */
  children(prefix: string): NodeDigest[] {
    if (prefix.length >= this.depth) return [];
    const base = this.offsets[prefix.length + 1]! + this.prefixValue(prefix) * 16;
    const out: NodeDigest[] = [];
    for (let h = 0; h < 16; h++) {
      const i = base + h;
      if (this.counts[i] === 0) continue;
      out.push({ prefix: prefix + h.toString(16), hash: this.hashHex(i), count: this.counts[i]! });
    }
    return out;
  }

  /**
   * The keys under some prefixes, each once, in (leaf, key) order, optionally resuming after a key
   * (a cursor from an earlier page: the key need not exist any more).
   */
  *entries(prefixes: string[], after?: string): Generator<KeyVersion> {
    const ranges = this.leafRanges(prefixes);
    const startLeaf = after === undefined ? -1 : leafOf(after, this.depth);
    for (const [lo, hi] of ranges) {
      for (let leaf = Math.max(lo, startLeaf); leaf < hi; leaf++) {
        if (this.heads[leaf] === -1) continue;
        const keys: string[] = [];
        for (let s = this.heads[leaf]!; s !== -1; s = this.next.a[s]!) keys.push(this.keyOf[s]!);
        if (keys.length > 1) keys.sort(cmpStr);
        for (const key of keys) {
          if (leaf === startLeaf && after !== undefined && cmpStr(key, after) <= 0) continue;
          const s = this.slots.get(key);
          if (s !== undefined) yield { key, ...this.info(s) };
        }
      }
    }
  }

  /** Every key with its version, in no particular order. */
  *all(): Generator<KeyVersion> {
    for (const [key, s] of this.slots) yield { key, ...this.info(s) };
  }

  private info(s: number): VersionInfo {
    const fl = this.flags.a[s]!;
    const v: VersionInfo = {
      ts: this.ts.a[s]!,
      node_id: this.nodes.name(this.nodeIx.a[s]!),
      deleted: (fl & F_DELETED) !== 0,
    };
    if (fl & F_VH) v.vh = this.vh.get(s);
    if (fl & F_LOST) v.lost = true;
    return v;
  }

  /** Leaf ranges [lo, hi) covered by some prefixes, sorted and merged. */
  private leafRanges(prefixes: string[]): [number, number][] {
    const raw = prefixes.map((p): [number, number] => {
      const shift = 16 ** (this.depth - p.length);
      const v = this.prefixValue(p);
      return [v * shift, (v + 1) * shift];
    });
    raw.sort((a, b) => a[0] - b[0]);
    const out: [number, number][] = [];
    for (const r of raw) {
      const last = out[out.length - 1];
      if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
      else out.push([r[0], r[1]]);
    }
    return out;
  }

  private prefixValue(prefix: string): number {
    if (!isPrefix(prefix, this.depth)) throw new Error(`invalid tree prefix "${prefix}"`);
    return prefix === "" ? 0 : Number.parseInt(prefix, 16);
  }

  private nodeIndex(prefix: string): number {
    return this.offsets[prefix.length]! + this.prefixValue(prefix);
  }

  private hashHex(i: number): string {
    return Buffer.from(this.hashes.buffer, i * HASH_BYTES, HASH_BYTES).toString("hex");
  }

  /** XOR a hash into the leaf and every ancestor, and move their counts by `delta`. */
  private apply(leaf: number, h: Uint8Array, delta: number): void {
    let v = leaf;
    for (let l = this.depth; l >= 0; l--) {
      const i = this.offsets[l]! + v;
      const o = i * HASH_BYTES;
      for (let b = 0; b < HASH_BYTES; b++) this.hashes[o + b] = this.hashes[o + b]! ^ h[b]!;
      this.counts[i] = this.counts[i]! + delta;
      v = Math.floor(v / 16);
    }
  }
}

function cmpStr(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Where the other side's digests come from: a peer over NATS, or another tree in tests. */
export type DigestSource = {
  root(): Promise<NodeDigest>;
  /** the non-empty children of every given prefix */
  children(prefixes: string[]): Promise<NodeDigest[]>;
};

/** What a descent found. */
export type Descent = {
  /** nodes whose keys must be listed and compared one by one */
  list: string[];
  /** differing nodes visited (the root included) */
  ranges: number;
};

/** A DigestSource over a local tree (tests, and a peer's view in-process). */
export function treeSource(tree: VersionTree): DigestSource {
  return {
    root: async () => tree.root(),
    children: async (prefixes) => prefixes.flatMap((p) => tree.children(p)),
  };
}

function same(a: NodeDigest | undefined, b: NodeDigest | undefined): boolean {
  const ac = a?.count ?? 0;
  const bc = b?.count ?? 0;
  if (ac !== bc) return false;
  return ac === 0 || a!.hash === b!.hash;
}

/**
 * Compare two trees level by level: descend only into nodes whose digests differ; stop at the leaves
 * or where both sides hold at most `smallCount` keys, and return those nodes to list.
 */
export async function descend(
  local: VersionTree,
  remote: DigestSource,
  opts: { smallCount?: number } = {},
): Promise<Descent> {
  const small = opts.smallCount ?? 16;
  const out: Descent = { list: [], ranges: 0 };
  const lr = local.root();
  const rr = await remote.root();
  if (same(lr, rr)) return out;
  out.ranges++;
  if (lr.count <= small && rr.count <= small) {
    out.list.push("");
    return out;
  }
  let frontier = [""];
  while (frontier.length > 0) {
    const theirs = new Map((await remote.children(frontier)).map((n) => [n.prefix, n]));
    const next: string[] = [];
    for (const p of frontier) {
      const mine = new Map(local.children(p).map((n) => [n.prefix, n]));
      for (let h = 0; h < 16; h++) {
        const c = p + h.toString(16);
        const a = mine.get(c);
        const b = theirs.get(c);
        if (same(a, b)) continue;
        out.ranges++;
        if (c.length >= local.depth || ((a?.count ?? 0) <= small && (b?.count ?? 0) <= small))
          out.list.push(c);
        else next.push(c);
      }
    }
    frontier = next;
  }
  return out;
}

/** Which side must move which key after comparing versions key by key. */
export type Plan = {
  /** keys the other side has newer (or only it has, or the same version with other contents): fetch and merge here */
  pull: string[];
  /** keys this side has newer (or only it has, or the same version with other contents): send to the other side */
  push: string[];
  /**
   * keys both sides hold at the same version of a put where exactly one side has no value hash
   * (`_meta` written by older code): the listings cannot tell whether the contents are equal
   */
  unhashed: string[];
  /** distinct keys compared */
  compared: number;
};

/**
 * True when two entries are the same version of a put with different contents: both carry a value
 * hash and the hashes differ. Without a hash on either side (`_meta` written by older code) the
 * listings cannot tell (see Plan.unhashed).
 */
export function contentsDiffer(a: VersionInfo, b: VersionInfo): boolean {
  return !a.deleted && !b.deleted && a.vh !== undefined && b.vh !== undefined && a.vh !== b.vh;
}

/**
 * Compare two listings of versions by LWW. Equal `(ts, node_id)` with a different deleted flag:
 * the tombstone wins. Equal versions of a put whose value hashes differ (only hand-made ops can
 * do that): the key moves both ways, and each side's merger keeps the greater value bytes (the
 * last tie-break of the register), so both end with the same one. Equal versions of a put where
 * only one side has a value hash: listed in `unhashed` (the caller may hash the local value). A key
 * only one side holds, as a tombstone for which `absentLike` is true (old enough to be collected
 * at the other side), moves neither way: collected and not yet collected are the same state.
 */
export function plan(
  local: Iterable<KeyVersion>,
  remote: Iterable<KeyVersion>,
  absentLike: (v: KeyVersion) => boolean = () => false,
): Plan {
  const mine = new Map<string, KeyVersion>();
  for (const e of local) mine.set(e.key, e);
  const out: Plan = { pull: [], push: [], unhashed: [], compared: mine.size };
  const seen = new Set<string>();
  for (const r of remote) {
    if (seen.has(r.key)) continue;
    seen.add(r.key);
    const l = mine.get(r.key);
    if (!l) {
      out.compared++;
      if (!absentLike(r)) out.pull.push(r.key);
      continue;
    }
    const c = compareVersions(r, l) || (r.deleted === l.deleted ? 0 : r.deleted ? 1 : -1);
    if (c > 0) out.pull.push(r.key);
    else if (c < 0) out.push.push(r.key);
    else if (l.lost || r.lost) {
      // the same version, lost on one side: the side that holds the value repairs the other
      if (l.lost && !r.lost) out.pull.push(r.key);
      else if (r.lost && !l.lost) out.push.push(r.key);
    } else if (contentsDiffer(l, r)) {
      out.pull.push(r.key);
      out.push.push(r.key);
    } else if (!l.deleted && (l.vh === undefined) !== (r.vh === undefined)) out.unhashed.push(r.key);
  }
  for (const [k, l] of mine) if (!seen.has(k) && !absentLike(l)) out.push.push(k);
  return out;
}
