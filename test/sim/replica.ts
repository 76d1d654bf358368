import type { JetStreamPublishOptions, MsgRequest, PubAck, StoredMsg } from "@nats-io/jetstream";
import type { Payload } from "@nats-io/nats-core";
import {
  type ClockMode,
  Coalescer,
  KeyedGate,
  type LocalEntry,
  type MergeDeps,
  type MergerMergeResponse,
  type MetaStoreLike,
  type Op,
  type Outcome,
  type Version,
  type WatcherDeps,
  applyOp,
  compareVersions,
  greaterOp,
  isSyncdError,
  newerLocal,
  observe,
  ownOpOf,
  reserve,
  stampEntry,
  versionIsOp,
} from "../../services/mod.ts";
/**
 * One simulated site: its stores, its clock, W watcher instances sharing the bucket's durable
 * consumer and M merger instances sharing the inbound op stream (I5), all running the real
 * `stampEntry` and `applyOp`. Like the real consumers, each instance handles the messages of one
 * key one after another (the real KeyedGate) and different keys, or different instances, at once,
 * and coalesces the messages of a key that wait behind a running one (the real Coalescer with the
 * services' own choice of winner: the newest local write, the greatest op): only the winner runs,
 * the losers are settled with it — acked once it went through, redelivered when it failed (a batch
 * cut by kill -9: nothing of it was acked, all of it comes again).
 */
import { StaleMetaCache } from "./cache.ts";
import { type Choices, FaultError, type Sim } from "./sched.ts";
import { type MetaCommit, SimBucket, SimMeta } from "./stores.ts";

export type VersionId = { ts: number; node_id: string };

/**
 * The site clock: one persisted high-water mark moved by `reserve` / `observe` (clock-rules.ts),
 * each request one step.
 */
export class SimClock {
  hw = 0;
  constructor(
    private readonly sim: Sim,
    readonly site: string,
    readonly mode: ClockMode,
    private readonly nowMs: () => number,
  ) {}

  reserve(count: number): Promise<number> {
    return this.sim.call(`${this.site} clock.tick ${count}`, () => {
      const r = reserve(this.mode, this.hw, count, this.nowMs());
      this.hw = r.hw;
      return r.start;
    });
  }

  observe(ts: number): Promise<void> {
    return this.sim.call(`${this.site} clock.observe ${ts}`, () => {
      this.hw = observe(this.hw, ts);
    });
  }
}

/**
 * A watcher instance's ticker: hands out timestamps from a reserved block without a round trip.
 * A block is never dropped, so it goes stale as soon as the site observes a newer remote ts: the
 * protocol must not depend on the clock for I4.
 */
class BlockTicker {
  private next = 0;
  private end = 0;
  constructor(
    private readonly clock: SimClock,
    private readonly blockSize: number,
  ) {}

  async tick(): Promise<number> {
    if (this.next < this.end) return this.next++;
    const start = await this.clock.reserve(this.blockSize);
    this.next = start;
    this.end = start + this.blockSize;
    return this.next++;
  }
}

/** A stamp (a watcher's commit to `_meta`) and the greatest version the site held before it. */
export type Stamp = { key: string; version: Version; held: VersionId | null };

/** What the network offers a replica. */
export type Network = {
  /** the watcher published an op (JetStream: the site's OUT stream, deduplicated by msgID) */
  publish(from: Replica, subject: string, payload: Uint8Array, msgID: string | undefined): PubAck;
  /** the last message on a subject of the site's OUT stream (a per-key compacted log), null: none */
  last(from: Replica, subject: string): { seq: number; data: Uint8Array } | null;
  /** a task threw: the run fails */
  fail(where: string, err: unknown): void;
};

export type ReplicaConfig = {
  site: string;
  bucket: string;
  mode: ClockMode;
  blockSize: number;
  watchers: number;
  mergers: number;
  /** at-least-once: the watcher's consumer sometimes delivers an entry twice */
  redeliver: boolean;
  nowMs: () => number;
  /** > 0: watchers and mergers read `_meta` through a stale cache of this many keys (sim/cache.ts) */
  metaCache?: number;
};

const GATE_LIMIT = 64;

/** A Coalescer's pick from the services' choice of winner. */
function pick<M>(a: M, b: M, which: "waiting" | "newcomer" | null): M | null {
  return which === null ? null : which === "waiting" ? a : b;
}
/** a message that failed this often is a livelock, not bad luck */
const MAX_DELIVERIES = 50;

export class Replica {
  readonly site: string;
  readonly nodeId: string;
  readonly meta: SimMeta;
  readonly bucket: SimBucket;
  readonly clock: SimClock;
  readonly mergeDeps: MergeDeps;
  /** the watcher's outcome for each bucket revision */
  readonly outcomes = new Map<number, Outcome[]>();
  readonly stamps: Stamp[] = [];
  readonly merges: MergerMergeResponse[] = [];
  /** greatest version ever committed to `_meta`, per key */
  private readonly maxHeld = new Map<string, VersionId>();
  private readonly watcherGates: Coalescer<{ entry: LocalEntry; delivery: number }>[];
  private readonly watchers: WatcherDeps[];
  private readonly mergerGates: Coalescer<{ op: Op; delivery: number }>[];
  /** coalesced batches whose winner failed: nothing of them acked, every message redelivered (coverage) */
  batchesCut = 0;
  /** messages that joined a waiting one of their key instead of running (coverage) */
  coalesced(): number {
    return [...this.watcherGates, ...this.mergerGates].reduce((n, g) => n + g.coalesced, 0);
  }

  constructor(
    private readonly sim: Sim,
    readonly cfg: ReplicaConfig,
    private readonly choices: Choices,
    private readonly net: Network,
  ) {
    this.site = cfg.site;
    this.nodeId = cfg.site;
    this.meta = new SimMeta(sim.call, `${cfg.site}`);
    this.bucket = new SimBucket(sim.call, `${cfg.site}`);
    this.clock = new SimClock(sim, cfg.site, cfg.mode, cfg.nowMs);
    this.mergeDeps = {
      buckets: new Map([[cfg.bucket, { meta: this.cached("merger"), data: this.bucket, maxValueSize: -1 }]]),
      observe: (ts) => this.clock.observe(ts),
      checkSkew: () => {},
    };
    this.meta.onCommit = (c) => this.committed(c);
    this.watchers = Array.from({ length: cfg.watchers }, (_, i) => this.watcherDeps(i));
    this.watcherGates = this.watchers.map(
      (_, w) =>
        new Coalescer<{ entry: LocalEntry; delivery: number }>(
          new KeyedGate(GATE_LIMIT),
          (a, b) =>
            pick(
              a,
              b,
              newerLocal(
                { rev: a.entry.rev, local: a.entry.headers === null, redelivered: a.entry.redelivered },
                { rev: b.entry.rev, local: b.entry.headers === null, redelivered: b.entry.redelivered },
              ),
            ),
          (win, losers) => this.stamp(w, win, losers),
        ),
    );
    this.mergerGates = Array.from(
      { length: cfg.mergers },
      (_, m) =>
        new Coalescer<{ op: Op; delivery: number }>(
          new KeyedGate(GATE_LIMIT),
          (a, b) => pick(a, b, greaterOp({ op: a.op, handMade: false }, { op: b.op, handMade: false })),
          (win, losers) => this.merge(m, win, losers),
        ),
    );
    this.bucket.feed((e) => {
      const entry: LocalEntry = {
        key: e.key,
        rev: e.rev,
        deleted: e.deleted,
        value: e.value,
        headers: e.version,
      };
      this.watch(entry, 1);
      if (cfg.redeliver && this.choices.next(4) === 1)
        void sim.step(`${this.site} watcher redelivers rev ${e.rev}`).then(() => this.watch(entry, 2));
    });
  }

  /** The watcher's durable consumer hands an entry to one instance; a failure is redelivered. */
  private watch(entry: LocalEntry, delivery: number): void {
    const w = this.choices.next(this.watchers.length);
    const e = { ...entry, redelivered: delivery > 1 };
    void this.watcherGates[w]!.submit(entry.key, { entry: e, delivery });
  }

  private outcome(rev: number, o: Outcome): void {
    const list = this.outcomes.get(rev) ?? [];
    list.push(o);
    this.outcomes.set(rev, list);
  }

  /** One watcher instance stamps the winner of a key's waiting entries; the losers go with it. */
  private async stamp(
    w: number,
    win: { entry: LocalEntry; delivery: number },
    losers: { entry: LocalEntry; delivery: number }[],
  ): Promise<void> {
    try {
      this.outcome(win.entry.rev, await stampEntry(this.watchers[w]!, win.entry));
      for (const l of losers) this.outcome(l.entry.rev, "skipped_superseded");
    } catch (err) {
      const where = `${this.site} watcher#${w} rev ${win.entry.rev}`;
      if (!(err instanceof FaultError) || win.delivery >= MAX_DELIVERIES) return this.net.fail(where, err);
      if (losers.length > 0) this.batchesCut++;
      for (const x of [win, ...losers])
        void this.sim
          .step(`${this.site} watcher#${w} rev ${x.entry.rev} nak`)
          .then(() => this.watch(x.entry, x.delivery + 1));
    }
  }

  /** An op arrived on the site's inbound stream: one merger instance applies it; a failure is redelivered. */
  deliver(op: Op, delivery = 1): void {
    const m = this.choices.next(this.mergerGates.length);
    void this.mergerGates[m]!.submit(`${op.bucket}/${op.key}`, { op, delivery });
  }

  /** One merger instance applies the greatest of a key's waiting ops; the others are stale with it. */
  private async merge(
    m: number,
    win: { op: Op; delivery: number },
    losers: { op: Op; delivery: number }[],
  ): Promise<void> {
    const { op, delivery } = win;
    try {
      this.merges.push(await applyOp(this.mergeDeps, op));
      for (const l of losers)
        this.merges.push({
          result: "stale",
          bucket: l.op.bucket,
          key: l.op.key,
          ts: op.ts,
          node_id: op.node_id,
        });
    } catch (err) {
      const where = `${this.site} merger#${m} ${op.op} ${op.key} ${op.ts}/${op.node_id}`;
      // like the real consumer: a fault or a conflict (409, decided later) is nak'd and redelivered
      const retry = err instanceof FaultError || (isSyncdError(err) && err.code === "SYNCD_ERR_CONFLICT");
      if (!retry || delivery >= MAX_DELIVERIES) return this.net.fail(where, err);
      if (losers.length > 0) this.batchesCut++;
      for (const x of [win, ...losers])
        void this.sim
          .step(`${this.site} merger#${m} ${x.op.op} ${x.op.key} ${x.op.ts}/${x.op.node_id} nak`)
          .then(() => this.deliver(x.op, x.delivery + 1));
    }
  }

  private watcherDeps(i: number): WatcherDeps {
    const ticker = new BlockTicker(this.clock, this.cfg.blockSize);
    return {
      site: this.site,
      nodeId: this.nodeId,
      bucket: this.cfg.bucket,
      meta: this.cached("watcher"),
      tick: () => ticker.tick(),
      // the simulated OUT log keeps the last message per subject, as the real one does; the
      // ordered publish reads it, and `_meta` and the bucket fresh (never through a cache)
      jsm: {
        streams: {
          getMessage: (_stream: string, q: MsgRequest) =>
            this.sim.call(`${this.site} watcher#${i} out.last`, () => {
              const m = "last_by_subj" in q ? this.net.last(this, q.last_by_subj) : null;
              return m && ({ seq: m.seq, data: m.data, header: undefined } as unknown as StoredMsg);
            }),
        },
      },
      holds: async (op) => versionIsOp((await this.meta.get(op.key, "watcher"))?.version, op),
      current: async (key) => {
        const me = await this.meta.get(key, "watcher");
        const v = me?.version;
        if (!v || v.merged || v.node_id !== this.nodeId) return null;
        return ownOpOf(v, v.deleted ? null : await this.bucket.latest(key), this.cfg.bucket, key);
      },
      js: {
        publish: async (
          subject: string,
          payload?: Payload,
          opts?: Partial<JetStreamPublishOptions>,
        ): Promise<PubAck> => {
          await this.sim.step(`${this.site} watcher#${i} publish ${opts?.msgID ?? ""}`);
          const data =
            typeof payload === "string" ? new TextEncoder().encode(payload) : (payload ?? new Uint8Array());
          return this.net.publish(this, subject, data, opts?.msgID);
        },
      },
    };
  }

  /** `_meta` as one process sees it: through its own stale cache when the scenario has one. */
  private cached(caller: "watcher" | "merger"): MetaStoreLike {
    const store = this.meta.as(caller);
    return this.cfg.metaCache ? new StaleMetaCache(store, this.cfg.metaCache) : store;
  }

  /** Every `_meta` commit, synchronously: record what a stamp was compared against (I4). */
  private committed(c: MetaCommit): void {
    const before = this.maxHeld.get(c.key) ?? null;
    if (c.caller === "watcher") {
      // what the site holds: every version `_meta` ever had for the key, and the bucket's headers
      let held = before;
      const l = this.bucket.peek(c.key);
      if (l?.version && (!held || compareVersions(l.version, held) > 0)) held = l.version;
      this.stamps.push({ key: c.key, version: c.version, held });
    }
    if (!before || compareVersions(c.version, before) > 0)
      this.maxHeld.set(c.key, { ts: c.version.ts, node_id: c.version.node_id });
  }
}
