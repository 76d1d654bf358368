/**
 * The reconciler's endpoint handlers, as plain async functions of their dependencies:
 * `digest` and `entries` answer peers from the version index; `run` and `status` are the
 * Reconciler's (see reconciler.ts).
 */
import { SyncdError } from "../lib/errors.ts";
import { valueHash } from "../lib/lww.ts";
import { encodeValue } from "../lib/op.ts";
import type {
  ReconcilerDigestRequest,
  ReconcilerDigestResponse,
  ReconcilerEntriesRequest,
  ReconcilerEntriesResponse,
} from "../lib/schemas.gen.ts";
import type { KeyVersion, VersionInfo, VersionTree } from "./tree.ts";
import { type ValueSource, type VersionedValue, readVersioned } from "./values.ts";

/** One listed entry, as on the wire. */
export type WireEntry = ReconcilerEntriesResponse["entries"][number];

/** What `digest` needs: the tree of a bucket (undefined: not replicated here). */
export type DigestDeps = { tree: (bucket: string) => VersionTree | undefined };

/** What `entries` needs besides the trees. */
export type EntriesDeps = DigestDeps & {
  values: (bucket: string) => ValueSource | undefined;
  /** the server's max payload: replies stay below it */
  maxPayload: number;
  /** value reads in flight per request */
  concurrency: number;
};

/** Bytes kept free in a reply for the envelope (bucket, flags, cursor). */
const ENVELOPE = 2048;

function treeOf(deps: DigestDeps, bucket: string): VersionTree {
  const t = deps.tree(bucket);
  if (!t) throw new SyncdError("SYNCD_ERR_UNKNOWN_BUCKET", `"${bucket}"`);
  return t;
}

function checkPrefixes(tree: VersionTree, prefixes: string[]): void {
  for (const p of prefixes)
    if (p.length > tree.depth)
      throw new SyncdError("SYNCD_ERR_SCHEMA", `prefix "${p}" is longer than the tree depth ${tree.depth}`);
}

/** `digest`: the root, and the non-empty children of every requested prefix. */
export async function digest(
  deps: DigestDeps,
  req: ReconcilerDigestRequest,
): Promise<ReconcilerDigestResponse> {
  const tree = treeOf(deps, req.bucket);
  checkPrefixes(tree, req.prefixes);
  const prefixes = [...new Set(req.prefixes)];
  return {
    bucket: req.bucket,
    depth: tree.depth,
    root: tree.root(),
    nodes: prefixes.flatMap((p) => tree.children(p)),
  };
}

/**
 * One entry of a reply. Listed only: the version the index holds, with its `vh` when it has one.
 * With values: the version the value was read with, and the value's own hash (which is what the
 * value is, even when `_meta` already holds other contents of the same version, mid-merge).
 */
function wireEntry(key: string, known: VersionInfo, read: VersionedValue | undefined): WireEntry {
  const listed: WireEntry = { key, ts: known.ts, node_id: known.node_id, deleted: known.deleted };
  if (!known.deleted && known.vh !== undefined) listed.vh = known.vh;
  if (!known.deleted && known.lost) listed.lost = true;
  if (!read) return listed;
  if (!read.ok) return { ...listed, omitted: read.reason };
  const v = read.version;
  const e: WireEntry = { key, ts: v.ts, node_id: v.node_id, deleted: v.deleted };
  if (v.deleted) return e;
  const value = read.value ?? new Uint8Array();
  return { ...e, vh: valueHash(value), ...encodeValue(value) };
}

/** A reply being filled up to a byte budget. */
class Page {
  readonly entries: WireEntry[] = [];
  private bytes = 0;
  constructor(private readonly budget: number) {}

  /** Add an entry if it fits; the first entry always goes in, without its value if it must. */
  add(e: WireEntry): boolean {
    const size = Buffer.byteLength(JSON.stringify(e)) + 1;
    if (this.bytes + size <= this.budget) {
      this.entries.push(e);
      this.bytes += size;
      return true;
    }
    if (this.entries.length > 0) return false;
    const { value: _v, encoding: _e, ...bare } = e;
    this.entries.push({ ...bare, omitted: "too_large" });
    this.bytes += Buffer.byteLength(JSON.stringify(bare)) + 32;
    return true;
  }
}

/**
 * Fill the page from `items` (key + the version the index holds), reading values `concurrency` at a
 * time when asked. Returns the number of items consumed (all of them unless the page filled up).
 */
async function fill(
  page: Page,
  items: Iterator<KeyVersion | { key: string; missing: true }>,
  read: ((key: string, known: VersionInfo) => Promise<VersionedValue>) | undefined,
  concurrency: number,
): Promise<{ consumed: number; full: boolean; last?: string }> {
  let consumed = 0;
  let last: string | undefined;
  for (;;) {
    const batch: (KeyVersion | { key: string; missing: true })[] = [];
    while (batch.length < concurrency) {
      const n = items.next();
      if (n.done) break;
      batch.push(n.value);
    }
    if (batch.length === 0) return { consumed, full: false, ...(last !== undefined ? { last } : {}) };
    const reads = await Promise.all(batch.map((b) => ("missing" in b || !read ? undefined : read(b.key, b))));
    for (let i = 0; i < batch.length; i++) {
      const b = batch[i]!;
      if (!("missing" in b) && !page.add(wireEntry(b.key, b, reads[i]))) {
        return { consumed, full: true, ...(last !== undefined ? { last } : {}) };
      }
      consumed++;
      last = b.key;
    }
  }
}

/**
 * `entries`: the versions of the named keys, then of the keys under the prefixes (in (leaf, key)
 * order, after the cursor); with values, each value read with its own version (values.ts). The
 * reply is capped below the max payload and says how to ask for the rest.
 */
export async function entries(
  deps: EntriesDeps,
  req: ReconcilerEntriesRequest,
): Promise<ReconcilerEntriesResponse> {
  const tree = treeOf(deps, req.bucket);
  const prefixes = req.prefixes ?? [];
  checkPrefixes(tree, prefixes);
  const src = req.values ? deps.values(req.bucket) : undefined;
  const read = src ? (key: string, known: VersionInfo) => readVersioned(src, key, known) : undefined;
  const page = new Page(Math.max(1024, deps.maxPayload - ENVELOPE));
  const res: ReconcilerEntriesResponse = { bucket: req.bucket, entries: page.entries };
  const concurrency = Math.max(1, deps.concurrency);
  if (req.keys) {
    const keyItems = (function* () {
      for (const key of req.keys ?? []) {
        const v = tree.get(key);
        yield v ? { key, ...v } : { key, missing: true as const };
      }
    })();
    const r = await fill(page, keyItems, read, concurrency);
    res.keys_done = r.consumed;
    if (r.full) {
      res.truncated = true;
      return res;
    }
  }
  if (prefixes.length > 0) {
    const r = await fill(page, tree.entries(prefixes, req.after), read, concurrency);
    if (r.full) {
      res.truncated = true;
      if (r.last !== undefined) res.next_after = r.last;
      else if (req.after !== undefined) res.next_after = req.after;
    }
  }
  return res;
}
