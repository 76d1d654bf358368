/**
 * A `_meta` store read through a watch-fed cache: `get` costs no round trip for a key the cache
 * holds. The cache is only a hint — every change is still a compare-and-set on the server — and
 * bounded: it keeps at most `maxEntries` keys (least recently used go first), so a process's memory
 * follows that setting (`--meta-cache-max`), not the number of keys ever written. A key it does not
 * hold, one whose compare-and-set lost, or one a caller invalidates is read from the server. Until
 * the first eviction the cache holds every key of `_meta`, and a key it does not hold is absent.
 * It is fed by the process's one watch of `_meta` (meta-watch.ts), which other followers share.
 */
import type { KV, KvWatchEntry } from "@nats-io/kv";
import { Columns, HASH8_RE, Hash8Column, Interner } from "./columns.ts";
import type { Logger } from "./logger.ts";
import { type Following, type MetaListener, MetaWatch } from "./meta-watch.ts";
import type { Version } from "./schemas.gen.ts";
import {
  type MetaEntry,
  MetaStore,
  type MetaStoreLike,
  isCasConflict,
  parseVersion,
  raiseMetaInvalid,
} from "./stores.ts";

/** Default of `--meta-cache-max`: keys of `_meta` one cache holds. */
export const DEFAULT_META_CACHE_MAX = 100_000;

/** `_meta` with a bounded, watch-fed cache in front. */
export class CachedMetaStore implements MetaStoreLike {
  private readonly direct: MetaStore;
  /** key → entry, or null when the key is known to be absent; in least-recently-used order */
  private readonly cache = new EntryColumns();
  private readonly stale = new Set<string>();
  private readonly max: number;
  private watch: Following | undefined;
  private ready = false;
  /** every key of `_meta` is in the cache (nothing evicted since the watch caught up) */
  private complete = false;
  private evictedAtReset = 0;
  private readonly listener: MetaListener = {
    reset: () => {
      this.ready = false;
      this.complete = false;
      this.evictedAtReset = this.counts.evictions;
    },
    entry: (e) => this.apply(e),
    caughtUp: () => {
      this.ready = true;
      this.complete = this.counts.evictions === this.evictedAtReset && this.cache.size <= this.max;
    },
    ended: () => {
      this.ready = false;
      this.complete = false;
    },
  };
  /** reads answered from the cache / read from the server / keys evicted */
  readonly counts = { hits: 0, reads: 0, evictions: 0 };

  constructor(
    private readonly kv: KV,
    private readonly log: Logger,
    opts: { maxEntries?: number } = {},
  ) {
    this.direct = new MetaStore(kv);
    this.max = Math.max(1, opts.maxEntries ?? DEFAULT_META_CACHE_MAX);
  }

  /**
   * Follow `_meta` through the process's shared watch of it (meta-watch.ts); resolves once the
   * initial values went through the cache.
   */
  async start(): Promise<void> {
    if (this.watch) return;
    const f = MetaWatch.follow(this.kv, this.listener, this.log);
    this.watch = f;
    try {
      await f.caughtUp;
    } catch (err) {
      if (this.watch === f) this.watch = undefined;
      throw err;
    }
  }

  /** Stop following `_meta` (the shared watch stops with its last user). */
  stop(): void {
    const w = this.watch;
    this.watch = undefined;
    this.ready = false;
    this.complete = false;
    w?.leave();
  }

  /** The number of cached keys (known-absent ones included); never above `maxEntries`. */
  get size(): number {
    return this.cache.size;
  }

  async get(key: string): Promise<MetaEntry | null> {
    if (this.ready && !this.stale.has(key)) {
      const e = this.cache.get(key);
      if (e !== undefined) {
        this.cache.touch(key);
        this.counts.hits++;
        return e;
      }
      if (this.complete) {
        this.counts.hits++;
        return null;
      }
    }
    this.counts.reads++;
    this.stale.delete(key);
    const e = await this.direct.get(key);
    if (e) this.remember(key, e);
    else this.put(key, null);
    return e;
  }

  async cas(key: string, version: Version, expected: MetaEntry | null): Promise<number> {
    try {
      const revision = await this.direct.cas(key, version, expected);
      this.remember(key, { version, revision });
      return revision;
    } catch (err) {
      if (isCasConflict(err)) this.invalidate(key);
      throw err;
    }
  }

  invalidate(key: string): void {
    this.stale.delete(key);
    this.stale.add(key);
    // a lost marker only costs a compare-and-set that fails and marks the key again
    if (this.stale.size > this.max) this.stale.delete(this.stale.values().next().value as string);
  }

  private put(key: string, e: MetaEntry | null): void {
    this.cache.set(key, e);
    while (this.cache.size > this.max) {
      this.cache.evictOldest();
      this.counts.evictions++;
      this.complete = false;
    }
  }

  private remember(key: string, e: MetaEntry): void {
    const cur = this.cache.revisionOf(key);
    if (cur === undefined || cur === null || e.revision > cur) this.put(key, e);
  }

  private apply(e: KvWatchEntry): void {
    if (e.operation !== "PUT" || e.value.length === 0) {
      const cur = this.cache.revisionOf(e.key);
      if (cur !== undefined && cur !== null && cur < e.revision) this.put(e.key, null);
      return;
    }
    const version = parseVersion(e.value);
    if (version) this.remember(e.key, { version, revision: e.revision });
    else {
      raiseMetaInvalid(this.kv, e.key, e.revision);
      this.invalidate(e.key);
    }
  }
}

const F_USED = 1;
const F_NULL = 2;
const F_DELETED = 4;
const F_MERGED = 8;
const F_HAS_MERGED = 16;
const F_INC = 32;
const F_VH = 64;
const VERSION_KEYS = new Set(["ts", "node_id", "deleted", "rev", "merged", "inc", "vh"]);

/** True when a version fits the columns exactly (else it is kept as it came). */
function packable(v: Version): boolean {
  for (const k in v) if (!VERSION_KEYS.has(k)) return false;
  return (
    typeof v.ts === "number" &&
    typeof v.node_id === "string" &&
    typeof v.deleted === "boolean" &&
    typeof v.rev === "number" &&
    (v.merged === undefined || typeof v.merged === "boolean") &&
    (v.inc === undefined || typeof v.inc === "number") &&
    (v.vh === undefined || (typeof v.vh === "string" && HASH8_RE.test(v.vh)))
  );
}

/**
 * The cache's entries in compact columns (columns.ts; about 110 bytes per key with the key itself,
 * where parsed versions took about 300): per key a slot with the `_meta` revision and the version's
 * fields, node ids interned. The map's order is the least-recently-used order. A version with
 * other fields or types than version.json's is kept as it came.
 */
export class EntryColumns {
  private readonly slots = new Map<string, number>();
  private readonly cols = new Columns();
  private readonly revision = this.cols.f64();
  private readonly ts = this.cols.f64();
  private readonly rev = this.cols.f64();
  private readonly inc = this.cols.f64();
  private readonly vh = new Hash8Column(this.cols);
  private readonly node = this.cols.u32();
  private readonly flags = this.cols.u8();
  private readonly odd = new Map<number, Version>();
  private readonly nodes = new Interner();

  get size(): number {
    return this.slots.size;
  }

  /** The entry of a key, null when known absent, undefined when not held. */
  get(key: string): MetaEntry | null | undefined {
    const s = this.slots.get(key);
    if (s === undefined) return undefined;
    const f = this.flags.a[s]!;
    if (f & F_NULL) return null;
    const revision = this.revision.a[s]!;
    const odd = this.odd.get(s);
    if (odd) return { version: odd, revision };
    const v: Version = {
      ts: this.ts.a[s]!,
      node_id: this.nodes.name(this.node.a[s]!),
      deleted: (f & F_DELETED) !== 0,
      rev: this.rev.a[s]!,
    };
    if (f & F_HAS_MERGED) v.merged = (f & F_MERGED) !== 0;
    if (f & F_INC) v.inc = this.inc.a[s]!;
    if (f & F_VH) v.vh = this.vh.get(s);
    return { version: v, revision };
  }

  /** The `_meta` revision of a key's entry, null when known absent, undefined when not held. */
  revisionOf(key: string): number | null | undefined {
    const s = this.slots.get(key);
    if (s === undefined) return undefined;
    return this.flags.a[s]! & F_NULL ? null : this.revision.a[s]!;
  }

  /** Make a key the most recently used. */
  touch(key: string): void {
    const s = this.slots.get(key);
    if (s === undefined) return;
    this.slots.delete(key);
    this.slots.set(key, s);
  }

  /** Set a key's entry and make it the most recently used. */
  set(key: string, e: MetaEntry | null): void {
    let s = this.slots.get(key);
    if (s === undefined) s = this.cols.alloc();
    else this.slots.delete(key);
    this.slots.set(key, s);
    this.odd.delete(s);
    if (e === null) {
      this.flags.a[s] = F_USED | F_NULL;
      return;
    }
    this.revision.a[s] = e.revision;
    const v = e.version;
    if (!packable(v)) {
      this.flags.a[s] = F_USED;
      this.odd.set(s, v);
      return;
    }
    let f = F_USED | (v.deleted ? F_DELETED : 0);
    if (v.merged !== undefined) f |= F_HAS_MERGED | (v.merged ? F_MERGED : 0);
    if (v.inc !== undefined) {
      f |= F_INC;
      this.inc.a[s] = v.inc;
    }
    if (v.vh !== undefined) {
      f |= F_VH;
      this.vh.set(s, v.vh);
    }
    this.flags.a[s] = f;
    this.ts.a[s] = v.ts;
    this.rev.a[s] = v.rev;
    this.node.a[s] = this.nodes.id(v.node_id);
  }

  /** Drop the least recently used key. */
  evictOldest(): void {
    const first = this.slots.entries().next();
    if (first.done) return;
    const [key, s] = first.value;
    this.slots.delete(key);
    this.odd.delete(s);
    this.flags.a[s] = 0;
    this.cols.release(s);
  }
}
