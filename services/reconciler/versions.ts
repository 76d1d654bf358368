/**
 * The version index of one bucket: `<bucket>_meta` followed into a VersionTree (initial values, then
 * every update; deleted or purged meta keys leave the tree), through the process's one watch of
 * `_meta` (meta-watch.ts: shared with the `_meta` cache in the site agent). Every pass of that watch
 * (a restart, or another follower joining) builds a fresh tree, swapped in once it has caught up.
 *
 * What the bucket itself holds enters the tree too (#12.2): the data bucket is watched into a
 * HeldMap (per key: the revision of its latest entry and the hash of the value it holds, "" for a
 * delete marker), and a put whose value the bucket does not hold — nothing there, a marker, or
 * other bytes than the `_meta` version's `vh` — is indexed `lost`. A lost entry hashes differently
 * (tree.ts entryHash), so a peer holding the value sees a differing digest and the run repairs it.
 * Values vanish without a watch event (stream purge, a removed message, max-age expiry, a stream
 * re-created): `verify` compares the KV stream's state with the map (created time, first sequence,
 * message count) and re-reads the bucket only when they disagree.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import type { KV, KvWatchEntry } from "@nats-io/kv";
import type { QueuedIterator } from "@nats-io/nats-core";
import { Columns, Hash8Column } from "../lib/columns.ts";
import { isNotFound } from "../lib/jserrors.ts";
import type { Logger } from "../lib/logger.ts";
import { valueHash } from "../lib/lww.ts";
import { type Following, type MetaListener, MetaWatch } from "../lib/meta-watch.ts";
import { validate } from "../lib/schema-registry.ts";
import type { Version } from "../lib/schemas.gen.ts";
import { kvStream } from "../lib/subjects.ts";
import { TREE_DEPTH, type VersionInfo, VersionTree } from "./tree.ts";

const utf8 = new TextDecoder();
const RESTART_DELAY_MS = 1000;

/** Parse a meta entry's value; null when it is not a valid version. */
export function parseVersion(data: Uint8Array): Version | null {
  let v: unknown;
  try {
    v = JSON.parse(utf8.decode(data));
  } catch {
    return null;
  }
  return validate("version.json", v) === null ? (v as Version) : null;
}

/** What the data bucket holds for a key: its latest entry's revision and value hash ("" = marker). */
export type Held = { rev: number; h: string };

const HELD_MARKER = 1;
const HELD_HASH = 2;

/**
 * Per key, what the data bucket holds, in compact columns (lib/columns.ts): a slot per key with its
 * revision and the 8-byte value hash (about 70 bytes per key with the key itself).
 */
export class HeldMap {
  private readonly slots = new Map<string, number>();
  private readonly cols = new Columns();
  private readonly rev = this.cols.f64();
  private readonly kind = this.cols.u8();
  private readonly hash = new Hash8Column(this.cols);

  get size(): number {
    return this.slots.size;
  }

  get(key: string): Held | undefined {
    const s = this.slots.get(key);
    return s === undefined ? undefined : { rev: this.rev.a[s]!, h: this.hashOf(s) };
  }

  set(key: string, held: Held): void {
    let s = this.slots.get(key);
    if (s === undefined) {
      s = this.cols.alloc();
      this.slots.set(key, s);
    }
    this.rev.a[s] = held.rev;
    if (held.h === "") {
      this.kind.a[s] = HELD_MARKER;
      this.hash.clear(s);
    } else {
      this.kind.a[s] = HELD_HASH;
      this.hash.set(s, held.h);
    }
  }

  delete(key: string): boolean {
    const s = this.slots.get(key);
    if (s === undefined) return false;
    this.slots.delete(key);
    this.hash.clear(s);
    this.kind.a[s] = 0;
    this.cols.release(s);
    return true;
  }

  keys(): IterableIterator<string> {
    return this.slots.keys();
  }

  /** The revision of every held key. */
  *revs(): Generator<number> {
    for (const s of this.slots.values()) yield this.rev.a[s]!;
  }

  /**
   * How many held keys have a revision up to `maxRev`, and the least of those revisions. Allocates
   * nothing per key: it runs every discovery round (5 s) over the whole index.
   */
  countUpTo(maxRev: number): { count: number; minRev: number } {
    let count = 0;
    let minRev = Number.POSITIVE_INFINITY;
    const revs = this.rev.a;
    this.slots.forEach((s) => {
      const rev = revs[s]!;
      if (rev > maxRev) return;
      count++;
      if (rev < minRev) minRev = rev;
    });
    return { count, minRev };
  }

  private hashOf(s: number): string {
    return this.kind.a[s] === HELD_MARKER ? "" : this.hash.get(s);
  }
}

/** The data bucket of an index, and how to read its stream's state. */
export type DataSide = { kv: KV; jsm: JetStreamManager };

/**
 * True when `_meta` claims a put whose value the bucket does not hold: no entry, a delete marker,
 * or other bytes than the version's value hash.
 */
export function isLost(v: { deleted: boolean; vh?: string | undefined }, held: Held | undefined): boolean {
  if (v.deleted) return false;
  if (!held || held.h === "") return true;
  return v.vh !== undefined && held.h !== v.vh;
}

/**
 * Follow a KV bucket (initial values, then updates) into `apply`; resolves with the iterator once
 * the initial values are in. `onEnd` runs when the watch ends (error or not).
 */
async function follow(
  kv: KV,
  apply: (e: KvWatchEntry) => void,
  onEnd: (err?: unknown) => void,
): Promise<QueuedIterator<KvWatchEntry>> {
  const initial = (await kv.status()).values;
  const it = await kv.watch({ key: ">" });
  let caughtUp: () => void = () => {};
  const done = new Promise<void>((resolve) => {
    caughtUp = resolve;
  });
  let isCaughtUp = initial === 0;
  if (isCaughtUp) caughtUp();
  void (async () => {
    let failure: unknown;
    try {
      for await (const e of it) {
        apply(e);
        if (!isCaughtUp && (e.isUpdate || e.delta === 0)) {
          isCaughtUp = true;
          caughtUp();
        }
      }
    } catch (err) {
      failure = err;
    }
    if (!isCaughtUp) {
      isCaughtUp = true;
      caughtUp();
    }
    onEnd(failure);
  })();
  await done;
  return it;
}

/** A bucket's live version tree. */
export class BucketIndex {
  private current: VersionTree;
  /** the tree a pass of the `_meta` watch is filling, swapped in once it caught up */
  private building: VersionTree | undefined;
  private watch: Following | undefined;
  private readonly listener: MetaListener = {
    reset: () => {
      // the first pass fills the empty tree in place; any later one builds a fresh tree
      if (!this.readyFlag && this.current.size === 0) {
        this.building = undefined;
        return;
      }
      if (this.readyFlag)
        this.log.warn({ bucket: this.bucket }, "meta watch restarted, rebuilding the version index");
      this.building = new VersionTree(this.depth);
    },
    entry: (e) => this.apply(this.building ?? this.current, e),
    caughtUp: () => this.swapIn(),
    ended: (err) => {
      if (err) this.log.warn({ err, bucket: this.bucket }, "meta watch failed");
      this.building = undefined;
    },
  };
  private dataWatcher: QueuedIterator<KvWatchEntry> | undefined;
  private held = new HeldMap();
  private streamCreated: string | undefined;
  /** the highest revision the data watch delivered */
  private maxRev = 0;
  private verifying: Promise<boolean> | undefined;
  private readonly lostSince = new Map<string, number>();
  private stopped = false;
  private readyFlag = false;
  /** meta entries that were not valid versions (ignored) */
  invalid = 0;
  /** times the bucket was re-read because values vanished without a watch event */
  rescans = 0;

  constructor(
    readonly bucket: string,
    private readonly meta: KV,
    private readonly log: Logger,
    private readonly depth: number = TREE_DEPTH,
    private readonly data?: DataSide,
  ) {
    this.current = new VersionTree(depth);
  }

  /**
   * Puts whose value the bucket has not held for at least `graceMs` (a write in flight is lost
   * for a moment: the bucket and `_meta` are written one after the other). Bounded by the number
   * of such keys, not by the bucket.
   */
  lostKeys(graceMs: number, now = Date.now()): string[] {
    const out: string[] = [];
    for (const [k, since] of this.lostSince) if (now - since >= graceMs) out.push(k);
    return out;
  }

  /**
   * Check the KV stream's state against what the watch accounts for; re-read the bucket when
   * values vanished without an event. Returns true when it re-read. One stream info per call.
   */
  verify(): Promise<boolean> {
    if (!this.data) return Promise.resolve(false);
    if (!this.verifying) {
      this.verifying = this.verifyNow().finally(() => {
        this.verifying = undefined;
      });
    }
    return this.verifying;
  }

  private async verifyNow(): Promise<boolean> {
    const data = this.data!;
    let why: string | undefined;
    try {
      const si = await data.jsm.streams.info(kvStream(this.bucket));
      const st = si.state;
      if (this.streamCreated === undefined) why = "stream created";
      else if (si.created !== this.streamCreated) why = "stream re-created";
      else {
        // judge only once the watch has seen everything up to the snapshot, and only the entries
        // that were already the latest then: writes racing the check are no evidence of a loss
        if (!(await this.seen(st.last_seq))) return false;
        const { count, minRev } = this.held.countUpTo(st.last_seq);
        if (count > 0 && st.first_seq > minRev) why = "values removed (purge or expiry)";
        else if (si.config.max_msgs_per_subject === 1 && st.messages < count) why = "messages removed";
      }
      if (!why) return false;
    } catch (err) {
      if (!isNotFound(err)) throw err;
      why = "stream gone";
    }
    this.rescans++;
    this.log.warn({ bucket: this.bucket, reason: why }, "bucket lost values without an op; re-reading it");
    await this.rescan();
    return true;
  }

  /** Wait (briefly) until the data watch has delivered revision `rev`; false if it has not. */
  private async seen(rev: number, waitMs = 2000): Promise<boolean> {
    const end = Date.now() + waitMs;
    while (this.maxRev < rev) {
      if (Date.now() > end || this.stopped) return false;
      await new Promise((r) => setTimeout(r, 20));
    }
    return true;
  }

  /** Read the bucket again into a fresh map, swap it in, and re-mark every key that changed. */
  private async rescan(): Promise<void> {
    const data = this.data!;
    this.dataWatcher?.stop();
    this.dataWatcher = undefined;
    const fresh = new HeldMap();
    let freshMax = 0;
    let live = false;
    let created: string | undefined;
    try {
      const si = await data.jsm.streams.info(kvStream(this.bucket));
      created = si.created;
      // the initial values cover the stream up to this snapshot, removed messages included
      freshMax = si.state.last_seq;
      const holder: { it?: QueuedIterator<KvWatchEntry> } = {};
      holder.it = await follow(
        data.kv,
        (e) => {
          if (live) this.applyHeld(e);
          else {
            heldEntry(fresh, e);
            if (e.revision > freshMax) freshMax = e.revision;
          }
        },
        (err) => this.dataEnded(holder.it ?? null, err),
      );
      this.dataWatcher = holder.it;
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    const old = this.held;
    this.held = fresh;
    this.maxRev = freshMax;
    this.streamCreated = created;
    live = true;
    const tree = this.current;
    for (const k of new Set([...old.keys(), ...fresh.keys()])) this.refresh(tree, k);
  }

  private dataEnded(it: QueuedIterator<KvWatchEntry> | null | undefined, err?: unknown): void {
    if (this.stopped || (it !== undefined && it !== this.dataWatcher)) return;
    if (err) this.log.warn({ err, bucket: this.bucket }, "data watch failed");
    setTimeout(() => {
      if (!this.stopped) this.rescan().catch((e: unknown) => this.dataEnded(undefined, e));
    }, RESTART_DELAY_MS).unref();
  }

  private applyHeld(e: KvWatchEntry): void {
    if (e.revision > this.maxRev) this.maxRev = e.revision;
    heldEntry(this.held, e);
    this.refresh(this.current, e.key);
  }

  /** Re-index a key's entry with what the bucket holds now (`lost` or not). */
  private refresh(tree: VersionTree, key: string): void {
    const v = tree.get(key);
    if (!v) {
      this.lostSince.delete(key);
      return;
    }
    this.setIndexed(tree, key, v);
  }

  private setIndexed(tree: VersionTree, key: string, v: VersionInfo): void {
    const lost = this.data ? isLost(v, this.held.get(key)) : false;
    const { lost: _l, ...rest } = v;
    tree.set(key, lost ? { ...rest, lost } : rest);
    if (tree !== this.current) return;
    if (!lost) this.lostSince.delete(key);
    else if (!this.lostSince.has(key)) this.lostSince.set(key, Date.now());
  }

  /**
   * A key whose delete marker was removed on purpose (tombstone collection): no longer held, so
   * the stream's smaller message count is no evidence of a loss.
   */
  forgetHeld(key: string): void {
    const h = this.held.get(key);
    if (h && h.h === "") this.held.delete(key);
  }

  /** The tree to read (replaced wholesale after a watch restart). */
  get tree(): VersionTree {
    return this.current;
  }

  /** True once the initial values of the first watch are in the tree. */
  get ready(): boolean {
    return this.readyFlag;
  }

  /**
   * Start following `_meta` through the process's shared watch of it (meta-watch.ts); resolves
   * when the initial values are indexed.
   */
  async start(): Promise<void> {
    if (this.data) await this.rescan();
    const f = MetaWatch.follow(this.meta, this.listener, this.log);
    this.watch = f;
    try {
      await f.caughtUp;
    } catch (err) {
      if (this.watch === f) this.watch = undefined;
      throw err;
    }
    this.readyFlag = true;
    this.log.info({ bucket: this.bucket, keys: this.current.size }, "version index ready");
  }

  /** Stop watching. */
  stop(): void {
    this.stopped = true;
    const w = this.watch;
    this.watch = undefined;
    w?.leave();
    this.dataWatcher?.stop();
  }

  /** A pass caught up: its tree replaces the current one, with every key's `lost` mark recomputed. */
  private swapIn(): void {
    const fresh = this.building;
    if (!fresh) return;
    this.building = undefined;
    const rebuilt = this.readyFlag;
    this.current = fresh;
    this.lostSince.clear();
    for (const e of fresh.all()) this.refresh(fresh, e.key);
    if (rebuilt) this.log.info({ bucket: this.bucket, keys: fresh.size }, "version index rebuilt");
  }

  private apply(tree: VersionTree, e: KvWatchEntry): void {
    if (e.operation !== "PUT") {
      tree.delete(e.key);
      if (tree === this.current) this.lostSince.delete(e.key);
      return;
    }
    const v = parseVersion(e.value);
    if (!v) {
      this.invalid++;
      this.log.warn({ bucket: this.bucket, key: e.key, revision: e.revision }, "meta entry is not a version");
      tree.delete(e.key);
      if (tree === this.current) this.lostSince.delete(e.key);
      return;
    }
    this.setIndexed(tree, e.key, { ts: v.ts, node_id: v.node_id, deleted: v.deleted, vh: v.vh });
  }
}

/** Fold one data-bucket entry into a HeldMap. */
function heldEntry(map: HeldMap, e: KvWatchEntry): void {
  map.set(e.key, { rev: e.revision, h: e.operation === "PUT" ? valueHash(e.value) : "" });
}
