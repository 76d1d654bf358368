/**
 * In-memory stores with the semantics the protocol relies on, every call one scheduler step (with
 * faults on, a call may also fail before or after its effect):
 *
 * - `SimMeta` (`<bucket>_meta`): get → {version, revision} | null; cas(key, version, expected)
 *   throws CasConflictError when the entry's revision is not expected.revision, or when expected is
 *   null and the key exists. Every commit is kept (`history`) for the I4 check.
 * - `SimBucket` (the data bucket, a KV stream): one revision counter for all keys (the stream
 *   sequence); `latest(key)`; `write(key, v, expectedRev)` (the merger: version headers, expected
 *   last subject sequence, 0 = no entry); `put` / `delete` (a user's own writes: no headers); and
 *   the feed of every entry in revision order (what the watcher's durable consumer delivers).
 */
import {
  type BucketEntry,
  type BucketStoreLike,
  CasConflictError,
  type LastOpReader,
  type MetaEntry,
  type MetaStoreLike,
  type Version,
  type Versioned,
} from "../../services/mod.ts";
import type { Call } from "./sched.ts";

const EMPTY = new Uint8Array();

/** Who called the meta store (the I4 check tells stamps from merges by it). */
export type Caller = "watcher" | "merger" | "reconciler";

/** One successful compare-and-set of `_meta`. */
export type MetaCommit = {
  key: string;
  version: Version;
  /** the version it replaced */
  prev: Version | null;
  caller: Caller;
  revision: number;
};

/** `<bucket>_meta` in memory. */
export class SimMeta {
  private readonly entries = new Map<string, MetaEntry>();
  private seq = 0;
  readonly history: MetaCommit[] = [];
  /** called synchronously inside a successful cas, before anything else can run */
  onCommit: ((c: MetaCommit) => void) | undefined;

  constructor(
    private readonly call: Call,
    readonly name: string,
  ) {}

  /** The store as one caller sees it. */
  as(caller: Caller): MetaStoreLike {
    return {
      get: (key) => this.get(key, caller),
      cas: (key, version, expected) => this.cas(key, version, expected, caller),
    };
  }

  get(key: string, caller: Caller = "merger"): Promise<MetaEntry | null> {
    return this.call(`${this.name} ${caller} meta.get ${key}`, () => {
      const e = this.entries.get(key);
      return e ? { version: { ...e.version }, revision: e.revision } : null;
    });
  }

  async cas(
    key: string,
    version: Version,
    expected: MetaEntry | null,
    caller: Caller = "merger",
  ): Promise<number> {
    return this.call(`${this.name} ${caller} meta.cas ${key} ${version.ts}/${version.node_id}`, () => {
      const cur = this.entries.get(key) ?? null;
      if (expected === null ? cur !== null : cur === null || cur.revision !== expected.revision)
        throw new CasConflictError(key);
      const revision = ++this.seq;
      this.entries.set(key, { version: { ...version }, revision });
      const c: MetaCommit = {
        key,
        version: { ...version },
        prev: cur ? cur.version : null,
        caller,
        revision,
      };
      this.history.push(c);
      this.onCommit?.(c);
      return revision;
    });
  }

  /** The current version of a key, without a step (checks, and the reconciler's watch-fed index). */
  peek(key: string): Version | null {
    const e = this.entries.get(key);
    return e ? { ...e.version } : null;
  }

  /** Every key's current version, without a step. */
  snapshot(): Map<string, Version> {
    return new Map([...this.entries].map(([k, e]) => [k, { ...e.version }]));
  }
}

/** One entry of the bucket's stream. */
export type SimEntry = BucketEntry & { key: string };

/** A KV data bucket in memory. */
export class SimBucket implements BucketStoreLike {
  private rev = 0;
  /** every entry, in revision order */
  readonly log: SimEntry[] = [];
  private readonly last = new Map<string, SimEntry>();
  private readonly feeds: ((e: SimEntry) => void)[] = [];

  constructor(
    private readonly call: Call,
    readonly name: string,
  ) {}

  /** Deliver every entry appended from now on, in revision order (synchronously at append). */
  feed(listener: (e: SimEntry) => void): void {
    this.feeds.push(listener);
  }

  latest(key: string): Promise<BucketEntry | null> {
    return this.call(`${this.name} latest ${key}`, () => this.peek(key));
  }

  write(key: string, v: Versioned, expectedRev: number): Promise<number> {
    const label = `${this.name} merger write ${key} ${v.ts}/${v.node_id}${v.deleted ? " DEL" : ""}`;
    return this.call(label, () => {
      if ((this.last.get(key)?.rev ?? 0) !== expectedRev) throw new CasConflictError(key);
      return this.append(key, v.deleted, v.deleted ? EMPTY : (v.value ?? EMPTY), {
        ts: v.ts,
        node_id: v.node_id,
      });
    });
  }

  /** A user's put (any KV client): no headers. */
  put(key: string, value: Uint8Array): Promise<number> {
    return this.call(`${this.name} user put ${key}`, () => this.append(key, false, value, null));
  }

  /** A user's delete: a delete marker without headers. */
  delete(key: string): Promise<number> {
    return this.call(`${this.name} user delete ${key}`, () => this.append(key, true, EMPTY, null));
  }

  /** The latest entry of a key, without a step. */
  peek(key: string): SimEntry | null {
    const e = this.last.get(key);
    return e ? { ...e, version: e.version ? { ...e.version } : null } : null;
  }

  /** What a KV `get` shows: key → value, delete markers absent. */
  contents(): Map<string, Uint8Array> {
    const out = new Map<string, Uint8Array>();
    for (const [k, e] of this.last) if (!e.deleted) out.set(k, e.value);
    return out;
  }

  /** The entry at a revision. */
  at(rev: number): SimEntry | undefined {
    return this.log[rev - 1];
  }

  private append(
    key: string,
    deleted: boolean,
    value: Uint8Array,
    version: { ts: number; node_id: string } | null,
  ): number {
    const e: SimEntry = { key, rev: ++this.rev, deleted, value: value.slice(), version };
    this.log.push(e);
    this.last.set(key, e);
    for (const f of this.feeds) f(e);
    return e.rev;
  }
}

/**
 * A site's compacted op log as the ordered publish (services/lib/oplog.ts) sees it: the last message
 * per subject. Record every publish with `record`; hand `reader` to the watcher as its `jsm`.
 */
export class SimOpLog {
  private readonly last = new Map<string, { seq: number; data: Uint8Array; header: undefined }>();
  private seq = 0;

  /** A message published on `subject`. */
  record(subject: string, data: Uint8Array): number {
    this.last.set(subject, { seq: ++this.seq, data, header: undefined });
    return this.seq;
  }

  /** What `lastOp` reads: the subject's last message, or null. */
  readonly reader = {
    streams: {
      getMessage: async (_stream: string, q: { last_by_subj?: string }) =>
        (q.last_by_subj ? this.last.get(q.last_by_subj) : undefined) ?? null,
    },
  } as unknown as LastOpReader;
}
