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
import type { Logger } from "./logger.ts";
import { type MetaListener, MetaWatch } from "./meta-watch.ts";
import type { Version } from "./schemas.gen.ts";
import { type MetaEntry, MetaStore, type MetaStoreLike, isCasConflict } from "./stores.ts";

const dec = new TextDecoder();

/** Default of `--meta-cache-max`: keys of `_meta` one cache holds. */
export const DEFAULT_META_CACHE_MAX = 100_000;

/** `_meta` with a bounded, watch-fed cache in front. */
export class CachedMetaStore implements MetaStoreLike {
  private readonly direct: MetaStore;
  /** key → entry, or null when the key is known to be absent; in least-recently-used order */
  private readonly cache = new Map<string, MetaEntry | null>();
  private readonly stale = new Set<string>();
  private readonly max: number;
  private watch: MetaWatch | undefined;
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
    const w = MetaWatch.acquire(this.kv, this.log);
    this.watch = w;
    try {
      await w.listen(this.listener);
    } catch (err) {
      this.watch = undefined;
      w.release();
      throw err;
    }
  }

  /** Stop following `_meta` (the shared watch stops with its last user). */
  stop(): void {
    const w = this.watch;
    this.watch = undefined;
    this.ready = false;
    this.complete = false;
    w?.unlisten(this.listener);
    w?.release();
  }

  /** The number of cached keys (known-absent ones included); never above `maxEntries`. */
  get size(): number {
    return this.cache.size;
  }

  async get(key: string): Promise<MetaEntry | null> {
    if (this.ready && !this.stale.has(key)) {
      const e = this.cache.get(key);
      if (e !== undefined) {
        this.touch(key, e);
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

  private touch(key: string, e: MetaEntry | null): void {
    this.cache.delete(key);
    this.cache.set(key, e);
  }

  private put(key: string, e: MetaEntry | null): void {
    this.touch(key, e);
    while (this.cache.size > this.max) {
      this.cache.delete(this.cache.keys().next().value as string);
      this.counts.evictions++;
      this.complete = false;
    }
  }

  private remember(key: string, e: MetaEntry): void {
    const cur = this.cache.get(key);
    if (!cur || e.revision > cur.revision) this.put(key, e);
  }

  private apply(e: KvWatchEntry): void {
    if (e.operation !== "PUT" || e.value.length === 0) {
      const cur = this.cache.get(e.key);
      if (cur && cur.revision < e.revision) this.put(e.key, null);
      return;
    }
    try {
      this.remember(e.key, { version: JSON.parse(dec.decode(e.value)) as Version, revision: e.revision });
    } catch {
      this.invalidate(e.key);
    }
  }
}
