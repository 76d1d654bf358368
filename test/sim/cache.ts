/**
 * A model of services/lib/meta-cache.ts that is worse than the real one: a `_meta` cache of at most
 * `max` keys (least recently used go first) that learns only from its own reads and
 * compare-and-sets — never from other writers — so what it answers may be arbitrarily stale. A key
 * it does not hold is read from the store; a lost compare-and-set or an invalidate forgets the key.
 * If the protocol converges through this, no correctness rests on the cache.
 */
import { type MetaEntry, type MetaStoreLike, type Version, isCasConflict } from "../../services/mod.ts";

export class StaleMetaCache implements MetaStoreLike {
  private readonly cache = new Map<string, MetaEntry | null>();
  /** keys answered from the cache, evicted */
  readonly counts = { hits: 0, evictions: 0 };

  constructor(
    private readonly inner: MetaStoreLike,
    private readonly max: number,
  ) {}

  async get(key: string): Promise<MetaEntry | null> {
    const e = this.cache.get(key);
    if (e !== undefined) {
      this.counts.hits++;
      this.put(key, e);
      return e && { version: { ...e.version }, revision: e.revision };
    }
    const read = await this.inner.get(key);
    this.put(key, read);
    return read;
  }

  async cas(key: string, version: Version, expected: MetaEntry | null): Promise<number> {
    try {
      const revision = await this.inner.cas(key, version, expected);
      this.put(key, { version: { ...version }, revision });
      return revision;
    } catch (err) {
      if (isCasConflict(err)) this.cache.delete(key);
      throw err;
    }
  }

  invalidate(key: string): void {
    this.cache.delete(key);
  }

  private put(key: string, e: MetaEntry | null): void {
    this.cache.delete(key);
    this.cache.set(key, e);
    while (this.cache.size > this.max) {
      this.cache.delete(this.cache.keys().next().value as string);
      this.counts.evictions++;
    }
  }
}
