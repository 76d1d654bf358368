/**
 * The version index of one bucket: `<bucket>_meta` read into a VersionTree (deleted or purged meta
 * keys leave the tree). It is brought up to date on demand — `verify`, before every digest a peer
 * asks for at the root, every run, every discovery round (5 s), `status` and the tombstone pass —
 * not per op: a site's reconciler costs nothing while ops flow, and a catch-up applies what
 * `_meta` and the bucket got since the last one (for each, a consumer of its own from that revision,
 * deleted once read: nothing stays at the server between catch-ups). A `_meta` stream re-created
 * is read whole into a fresh tree, swapped in once read.
 *
 * What the bucket itself holds enters the tree too (#12.2): the data bucket is read into a
 * HeldMap (per key: the revision of its latest entry and the hash of the value it holds, "" for a
 * delete marker), and a put whose value the bucket does not hold — nothing there, a marker, or
 * other bytes than the `_meta` version's `vh` — is indexed `lost`. A lost entry hashes differently
 * (tree.ts entryHash), so a peer holding the value sees a differing digest and the run repairs it.
 * Values vanish without an entry (stream purge, a removed message, max-age expiry, a stream
 * re-created): `verify` compares the KV stream's state with the map (created time, first sequence,
 * message count) and re-reads the bucket only when they disagree.
 */
import {
  AckPolicy,
  DeliverPolicy,
  type JetStreamManager,
  type JsMsg,
  type MsgRequest,
  type NextMsgRequest,
  type StoredMsg,
  type StreamInfo,
} from "@nats-io/jetstream";
import { nuid } from "@nats-io/nats-core";
import { Columns, Hash8Column } from "../lib/columns.ts";
import { isNotFound } from "../lib/jserrors.ts";
import type { Logger } from "../lib/logger.ts";
import { valueHash } from "../lib/lww.ts";
import { isDeleteMarker, parseVersion } from "../lib/stores.ts";
import { Durables, kvFilter, kvKeyOf, kvStream, metaBucket } from "../lib/subjects.ts";
import { TREE_DEPTH, type VersionInfo, VersionTree } from "./tree.ts";

/** a read's consumer: messages per pull, how long a pull waits, and when the server drops it if we cannot */
const READ_BATCH = 1000;
const READ_EXPIRES_MS = 5000;
const READ_INACTIVE_MS = 30_000;
const NANOS_PER_MS = 1_000_000;

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

/**
 * True when `_meta` claims a put whose value the bucket does not hold: no entry, a delete marker,
 * or other bytes than the version's value hash.
 */
export function isLost(v: { deleted: boolean; vh?: string | undefined }, held: Held | undefined): boolean {
  if (v.deleted) return false;
  if (!held || held.h === "") return true;
  return v.vh !== undefined && held.h !== v.vh;
}

/** One entry of a KV stream, as the index reads it: a value, or a delete or purge marker. */
type Entry = { key: string; marker: boolean; value: Uint8Array; revision: number };

/** An entry from a consumer's message (`headers`) or a message get's (`header`). */
function entryOf(
  bucket: string,
  m: { kind: "consumed"; msg: JsMsg } | { kind: "got"; msg: StoredMsg },
): Entry {
  const headers = m.kind === "consumed" ? m.msg.headers : m.msg.header;
  return {
    key: kvKeyOf(bucket, m.msg.subject),
    marker: isDeleteMarker(headers),
    value: m.msg.data,
    revision: m.msg.seq,
  };
}

/**
 * The widest catch-up (in stream sequences) read by message gets instead of through a consumer of
 * its own: measured on 2.9.10 and 2.15.2, a consumer created, pulled once and deleted costs the
 * server 2.1-2.7 ms and the client 1.5-1.9 ms, a message get ~0.2 and ~0.4 ms. So a lone write
 * anywhere in the mesh costs each site's reconciler two gets (`_meta` and the bucket), not two consumers.
 */
const GET_READ_MAX = 8;

/**
 * Apply the entries after revision `from` up to `upTo` by message gets: each the next stored entry
 * at or after a sequence (deleted ones skipped by the server), served by the stream leader like the
 * info `upTo` came from. At most `upTo - from` gets.
 */
async function getKv(
  jsm: JetStreamManager,
  bucket: string,
  from: number,
  upTo: number,
  apply: (e: Entry) => void,
): Promise<number> {
  for (let at = from; at < upTo; ) {
    // STREAM.MSG.GET takes next_by_subj (2.9+) although nats.js types it for direct gets only
    const next: NextMsgRequest = { seq: at + 1, next_by_subj: kvFilter(bucket) };
    const m = await jsm.streams.getMessage(kvStream(bucket), next as unknown as MsgRequest);
    if (!m || m.seq > upTo) break;
    apply(entryOf(bucket, { kind: "got", msg: m }));
    at = m.seq;
  }
  return upTo;
}

/**
 * Read a KV bucket's stream into `apply`, in order: its latest entry per key (`from: "latest"`), or
 * every entry after revision `from`. Up to {@link GET_READ_MAX} sequences by message gets, more
 * through a consumer of its own (in memory, no acks), deleted when done, so nothing stays at the
 * server between reads. Applies the entries up to `upTo` (the stream's last sequence in the info
 * the caller read; later ones wait for the next read) and returns it, or undefined when a
 * consumer's entries stopped coming (removed while being read): the caller reads the whole bucket
 * instead. Gets skip entries removed meanwhile, as a consumer does for single deleted messages; a
 * purge shows in the caller's checks of the stream state.
 */
async function readKv(
  jsm: JetStreamManager,
  bucket: string,
  from: number | "latest",
  upTo: number,
  apply: (e: Entry) => void,
): Promise<number | undefined> {
  if (from !== "latest" && upTo - from <= GET_READ_MAX) return getKv(jsm, bucket, from, upTo, apply);
  const stream = kvStream(bucket);
  const ci = await jsm.consumers.add(stream, {
    name: `${Durables.indexRead}-${nuid.next()}`,
    ack_policy: AckPolicy.None,
    ...(from === "latest"
      ? { deliver_policy: DeliverPolicy.LastPerSubject }
      : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from + 1 }),
    filter_subject: kvFilter(bucket),
    inactive_threshold: READ_INACTIVE_MS * NANOS_PER_MS,
    mem_storage: true,
    num_replicas: 1,
  });
  let max = from === "latest" ? 0 : from;
  try {
    const consumer = await jsm.jetstream().consumers.get(stream, ci.name);
    let pending = ci.num_pending;
    while (pending > 0) {
      const batch = await consumer.fetch({
        max_messages: Math.min(pending, READ_BATCH),
        expires: READ_EXPIRES_MS,
      });
      let got = 0;
      for await (const m of batch) {
        got++;
        // what came after the snapshot waits for the next read: the index then accounts for the
        // stream exactly up to the snapshot, whose message count it can be checked against
        if (m.seq <= upTo) apply(entryOf(bucket, { kind: "consumed", msg: m }));
        if (m.seq > max) max = m.seq;
        pending = m.info.pending;
      }
      if (got === 0) return undefined;
      // past the snapshot: what came since waits for the next read (no chasing a busy stream)
      if (max >= upTo) break;
    }
    return upTo;
  } finally {
    await jsm.consumers.delete(stream, ci.name).catch(() => {});
  }
}

/** Where the index's read of one KV stream stands: the stream read (its created time) and its last revision. */
type Cursor = { created: string | undefined; rev: number };

/**
 * Apply what stream `bucket` got since `at` (and advance it), `si` being its info. Returns why it
 * cannot — the stream created or re-created, shortened, or entries gone while being read — and
 * then the caller reads the stream whole.
 */
async function advance(
  jsm: JetStreamManager,
  bucket: string,
  at: Cursor,
  si: StreamInfo,
  apply: (e: Entry) => void,
): Promise<string | undefined> {
  if (si.created !== at.created) return at.created === undefined ? "stream created" : "stream re-created";
  if (si.state.last_seq < at.rev) return "stream shortened";
  if (si.state.last_seq === at.rev) return undefined;
  const upTo = await readKv(jsm, bucket, at.rev, si.state.last_seq, apply);
  if (upTo === undefined) return "entries gone while reading them";
  at.rev = upTo;
  return undefined;
}

/**
 * A bucket's version tree, brought up to date on demand ({@link BucketIndex.verify}): nothing of it
 * runs per op, and it holds no consumer between reads.
 */
export class BucketIndex {
  private current: VersionTree;
  /** how far the tree accounts for `_meta` */
  private metaAt: Cursor = { created: undefined, rev: 0 };
  private held = new HeldMap();
  /** how far the held map accounts for the bucket */
  private dataAt: Cursor = { created: undefined, rev: 0 };
  private verifying: Promise<boolean> | undefined;
  private verifiedAt = 0;
  private readonly lostSince = new Map<string, number>();
  private stopped = false;
  private readyFlag = false;
  /** meta entries that were not valid versions (ignored) */
  invalid = 0;
  /** times the bucket was re-read because values vanished without a watch event */
  rescans = 0;
  /** times `_meta` was read whole again (its stream re-created, purged or shortened, or entries gone while tailing it) */
  rebuilds = 0;

  constructor(
    readonly bucket: string,
    private readonly log: Logger,
    private readonly jsm: JetStreamManager,
    private readonly depth: number = TREE_DEPTH,
  ) {
    this.current = new VersionTree(depth);
  }

  /**
   * Puts whose value the bucket has not held for at least `graceMs` (a write in flight is lost
   * for a moment: the bucket and `_meta` are written one after the other), as of the last
   * {@link verify}. Bounded by the number of such keys, not by the bucket.
   */
  lostKeys(graceMs: number, now = Date.now()): string[] {
    const out: string[] = [];
    for (const [k, since] of this.lostSince) if (now - since >= graceMs) out.push(k);
    return out;
  }

  /**
   * Bring the tree up to date (`_meta` and the bucket, from where the last call left them), then
   * check the KV stream's state against it and re-read the bucket when values vanished without
   * an event. Returns true when it re-read. Concurrent calls share one.
   */
  verify(): Promise<boolean> {
    if (!this.verifying) {
      const started = Date.now();
      this.verifying = this.verifyNow().finally(() => {
        this.verifying = undefined;
        this.verifiedAt = started;
      });
    }
    return this.verifying;
  }

  /**
   * {@link verify} unless one started less than `maxAgeMs` ago (0: always) — for the requests of a
   * peer's run after its root digest, which another instance of this site's reconciler may have answered.
   */
  async fresh(maxAgeMs: number): Promise<void> {
    if (Date.now() - this.verifiedAt >= maxAgeMs) await this.verify();
  }

  /** The `_meta` stream sequence the tree accounts for. */
  get metaSeq(): number {
    return this.metaAt.rev;
  }

  /**
   * {@link verify} unless the tree already accounts for `_meta` up to `seq` (the root of a peer's
   * run, which another instance of this site's reconciler may have answered).
   */
  async atLeast(seq: number): Promise<void> {
    // a catch-up in flight may have read `_meta` before seq: then one more
    for (let i = 0; i < 2 && this.metaAt.rev < seq; i++) await this.verify();
  }

  private async verifyNow(): Promise<boolean> {
    if (this.stopped) return false;
    await this.catchUpMeta();
    let why: string | undefined;
    try {
      const si = await this.jsm.streams.info(kvStream(this.bucket));
      const st = si.state;
      why = await advance(this.jsm, this.bucket, this.dataAt, si, (e) => this.applyHeld(e));
      // judge only the entries that were already the latest at the snapshot: writes racing the
      // check are no evidence of a loss
      if (!why) {
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

  /** Apply what `_meta` got since the last call; read it whole when its stream is not the one followed. */
  private async catchUpMeta(): Promise<void> {
    const name = metaBucket(this.bucket);
    let si: StreamInfo;
    try {
      si = await this.jsm.streams.info(kvStream(name));
    } catch (err) {
      if (!isNotFound(err)) throw err;
      return;
    }
    let why = await advance(this.jsm, name, this.metaAt, si, (e) => this.metaEntry(this.current, e));
    // one message per key (history 1): fewer messages than versions in the tree means entries were
    // removed without a marker (`nats stream purge`, a message deleted, a marker this index missed)
    if (!why && si.config.max_msgs_per_subject === 1 && si.state.messages < this.current.size)
      why = `entries removed without a marker (${si.state.messages} messages, ${this.current.size} versions)`;
    if (!why) return;
    this.rebuilds++;
    this.log.warn(
      { bucket: this.bucket, reason: why },
      "meta stream changed under the version index, rebuilding it",
    );
    await this.pass();
  }

  /** Read `_meta` whole (its latest entry per key) into a fresh tree and swap it in. */
  private async pass(): Promise<void> {
    const name = metaBucket(this.bucket);
    // entries removed while being read (a purge in progress): read again, a few times at most
    for (let attempt = 1; ; attempt++) {
      const si = await this.jsm.streams.info(kvStream(name));
      const fresh = new VersionTree(this.depth);
      const read = await readKv(this.jsm, name, "latest", si.state.last_seq, (e) => this.metaEntry(fresh, e));
      if (read === undefined && attempt < 3) continue;
      this.metaAt = { created: si.created, rev: read ?? si.state.last_seq };
      this.swapIn(fresh);
      return;
    }
  }

  /** Read the bucket again into a fresh map, swap it in, and re-mark every key that changed. */
  private async rescan(): Promise<void> {
    let fresh = new HeldMap();
    let freshMax = 0;
    let created: string | undefined;
    try {
      // entries removed while being read (a purge in progress): read again, a few times at most
      for (let attempt = 1; ; attempt++) {
        const si = await this.jsm.streams.info(kvStream(this.bucket));
        created = si.created;
        const into = new HeldMap();
        const read = await readKv(this.jsm, this.bucket, "latest", si.state.last_seq, (e) =>
          heldEntry(into, e),
        );
        fresh = into;
        freshMax = read ?? si.state.last_seq;
        if (read !== undefined || attempt === 3) break;
      }
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    const old = this.held;
    this.held = fresh;
    this.dataAt = { created, rev: freshMax };
    const tree = this.current;
    for (const k of new Set([...old.keys(), ...fresh.keys()])) this.refresh(tree, k);
  }

  private applyHeld(e: Entry): void {
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
    const lost = isLost(v, this.held.get(key));
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

  /** A key collected here (its tombstone purged from `_meta` and the bucket): out of the index at once. */
  forget(key: string): void {
    this.current.delete(key);
    this.held.delete(key);
    this.lostSince.delete(key);
  }

  /** A tombstone `_meta` no longer holds: out of the index, unless the key changed since. */
  forgetTombstone(key: string, v: { ts: number; node_id: string }): void {
    const now = this.current.get(key);
    if (now?.deleted && now.ts === v.ts && now.node_id === v.node_id) this.forget(key);
  }

  /** The tree as of the last {@link verify} (replaced wholesale after a rebuild). */
  get tree(): VersionTree {
    return this.current;
  }

  /** True once the initial values are in the tree. */
  get ready(): boolean {
    return this.readyFlag;
  }

  /** Read the bucket and `_meta` (through the process's shared watch of it) into the tree. */
  async start(): Promise<void> {
    await this.rescan();
    await this.pass();
    this.readyFlag = true;
    this.log.info({ bucket: this.bucket, keys: this.current.size }, "version index ready");
  }

  /** Stop: a verify in progress finishes, nothing starts again. */
  stop(): void {
    this.stopped = true;
  }

  /** A fresh tree replaces the current one, with every key's `lost` mark recomputed. */
  private swapIn(fresh: VersionTree): void {
    const rebuilt = this.readyFlag;
    this.current = fresh;
    this.lostSince.clear();
    for (const e of fresh.all()) this.refresh(fresh, e.key);
    if (rebuilt) this.log.info({ bucket: this.bucket, keys: fresh.size }, "version index rebuilt");
  }

  private metaEntry(tree: VersionTree, e: Entry): void {
    if (e.marker) {
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
function heldEntry(map: HeldMap, e: Entry): void {
  map.set(e.key, { rev: e.revision, h: e.marker ? "" : valueHash(e.value) });
}
