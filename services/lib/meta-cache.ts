/**
 * A `_meta` store read through a watch-fed cache: `get` costs no round trip once the watch has
 * caught up. The cache is only a hint — every change is still a compare-and-set on the server — and
 * a key whose compare-and-set lost (or that a caller invalidates) is read directly the next time.
 */
import type { KV, KvWatchEntry } from "@nats-io/kv";
import type { QueuedIterator } from "@nats-io/nats-core";
import type { Logger } from "./logger.ts";
import type { Version } from "./schemas.gen.ts";
import { type MetaEntry, MetaStore, type MetaStoreLike, isCasConflict } from "./stores.ts";

const dec = new TextDecoder();
const RESTART_MS = 1000;

/** `_meta` with a watch-fed cache in front. */
export class CachedMetaStore implements MetaStoreLike {
  private readonly direct: MetaStore;
  private readonly cache = new Map<string, MetaEntry>();
  private readonly stale = new Set<string>();
  private watcher: QueuedIterator<KvWatchEntry> | undefined;
  private ready = false;
  private stopped = false;
  /** reads answered from the cache / read from the server */
  readonly counts = { hits: 0, reads: 0 };

  constructor(
    private readonly kv: KV,
    private readonly log: Logger,
  ) {
    this.direct = new MetaStore(kv);
  }

  /** Start the watch; resolves once the initial values are cached. */
  async start(): Promise<void> {
    const initial = (await this.kv.status()).values;
    const it = await this.kv.watch({ key: ">" });
    this.watcher = it;
    let caughtUp!: () => void;
    const done = new Promise<void>((r) => {
      caughtUp = r;
    });
    if (initial === 0) {
      this.ready = true;
      caughtUp();
    }
    void (async () => {
      try {
        for await (const e of it) {
          this.apply(e);
          if (!this.ready && (e.isUpdate || e.delta === 0)) {
            this.ready = true;
            caughtUp();
          }
        }
      } catch (err) {
        this.log.warn({ err }, "meta watch failed");
      }
      this.ready = false;
      caughtUp();
      if (!this.stopped) {
        this.log.warn("meta watch ended; reading _meta directly until it is back");
        setTimeout(() => {
          if (!this.stopped)
            this.start().catch((err) => this.log.warn({ err }, "could not restart the meta watch"));
        }, RESTART_MS).unref();
      }
    })();
    await done;
  }

  /** Stop the watch. */
  stop(): void {
    this.stopped = true;
    this.watcher?.stop();
  }

  /** The number of cached keys. */
  get size(): number {
    return this.cache.size;
  }

  async get(key: string): Promise<MetaEntry | null> {
    if (this.ready && !this.stale.has(key)) {
      this.counts.hits++;
      return this.cache.get(key) ?? null;
    }
    this.counts.reads++;
    this.stale.delete(key);
    const e = await this.direct.get(key);
    if (e) this.remember(key, e);
    else this.cache.delete(key);
    return e;
  }

  async cas(key: string, version: Version, expected: MetaEntry | null): Promise<number> {
    try {
      const revision = await this.direct.cas(key, version, expected);
      this.remember(key, { version, revision });
      return revision;
    } catch (err) {
      if (isCasConflict(err)) this.stale.add(key);
      throw err;
    }
  }

  invalidate(key: string): void {
    this.stale.add(key);
  }

  private remember(key: string, e: MetaEntry): void {
    const cur = this.cache.get(key);
    if (!cur || e.revision > cur.revision) this.cache.set(key, e);
  }

  private apply(e: KvWatchEntry): void {
    if (e.operation !== "PUT" || e.value.length === 0) {
      const cur = this.cache.get(e.key);
      if (cur && cur.revision < e.revision) this.cache.delete(e.key);
      return;
    }
    try {
      this.remember(e.key, { version: JSON.parse(dec.decode(e.value)) as Version, revision: e.revision });
    } catch {
      this.stale.add(e.key);
    }
  }
}
