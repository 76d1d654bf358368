/**
 * The version index of one bucket: `<bucket>_meta` watched into a VersionTree (initial values, then
 * every update; deleted or purged meta keys leave the tree). If the watch ends unexpectedly, a fresh
 * tree is built from a new watch and swapped in once it has caught up.
 */
import type { KV, KvWatchEntry } from "@nats-io/kv";
import type { QueuedIterator } from "@nats-io/nats-core";
import type { Logger } from "../lib/logger.ts";
import { validate } from "../lib/schema-registry.ts";
import type { Version } from "../lib/schemas.gen.ts";
import { TREE_DEPTH, VersionTree } from "./tree.ts";

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

/** A bucket's live version tree. */
export class BucketIndex {
  private current: VersionTree;
  private watcher: QueuedIterator<KvWatchEntry> | undefined;
  private stopped = false;
  private readyFlag = false;
  /** meta entries that were not valid versions (ignored) */
  invalid = 0;

  constructor(
    readonly bucket: string,
    private readonly meta: KV,
    private readonly log: Logger,
    private readonly depth: number = TREE_DEPTH,
  ) {
    this.current = new VersionTree(depth);
  }

  /** The tree to read (replaced wholesale after a watch restart). */
  get tree(): VersionTree {
    return this.current;
  }

  /** True once the initial values of the first watch are in the tree. */
  get ready(): boolean {
    return this.readyFlag;
  }

  /** Start watching; resolves when the initial values are indexed. */
  async start(): Promise<void> {
    await this.watch(this.current);
    this.readyFlag = true;
    this.log.info({ bucket: this.bucket, keys: this.current.size }, "version index ready");
  }

  /** Stop watching. */
  stop(): void {
    this.stopped = true;
    this.watcher?.stop();
  }

  private async watch(tree: VersionTree): Promise<void> {
    const initial = (await this.meta.status()).values;
    const it = await this.meta.watch({ key: ">" });
    this.watcher = it;
    let caughtUp: () => void = () => {};
    const done = new Promise<void>((resolve) => {
      caughtUp = resolve;
    });
    let isCaughtUp = initial === 0;
    if (isCaughtUp) caughtUp();
    void (async () => {
      try {
        for await (const e of it) {
          this.apply(tree, e);
          if (!isCaughtUp && (e.isUpdate || e.delta === 0)) {
            isCaughtUp = true;
            caughtUp();
          }
        }
      } catch (err) {
        this.log.warn({ err, bucket: this.bucket }, "meta watch failed");
      }
      if (!isCaughtUp) {
        isCaughtUp = true;
        caughtUp();
      }
      if (!this.stopped) this.restart();
    })();
    await done;
  }

  private restart(): void {
    this.log.warn({ bucket: this.bucket }, "meta watch ended, rebuilding the version index");
    setTimeout(() => {
      if (this.stopped) return;
      const fresh = new VersionTree(this.depth);
      this.watch(fresh).then(
        () => {
          this.current = fresh;
          this.log.info({ bucket: this.bucket, keys: fresh.size }, "version index rebuilt");
        },
        (err: unknown) => {
          this.log.warn({ err, bucket: this.bucket }, "could not restart the meta watch");
          if (!this.stopped) this.restart();
        },
      );
    }, RESTART_DELAY_MS).unref();
  }

  private apply(tree: VersionTree, e: KvWatchEntry): void {
    if (e.operation !== "PUT") {
      tree.delete(e.key);
      return;
    }
    const v = parseVersion(e.value);
    if (!v) {
      this.invalid++;
      this.log.warn({ bucket: this.bucket, key: e.key, revision: e.revision }, "meta entry is not a version");
      tree.delete(e.key);
      return;
    }
    tree.set(e.key, { ts: v.ts, node_id: v.node_id, deleted: v.deleted, vh: v.vh });
  }
}
