import type { JetStreamPublishOptions, PubAck } from "@nats-io/jetstream";
import type { Payload } from "@nats-io/nats-core";
import {
  type ClockMode,
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
  isSyncdError,
  observe,
  reserve,
  stampEntry,
} from "../../services/mod.ts";
/**
 * One simulated site: its stores, its clock, W watcher instances sharing the bucket's durable
 * consumer and M merger instances sharing the inbound op stream (I5), all running the real
 * `stampEntry` and `applyOp`. Like the real consumers, each instance handles the messages of one
 * key one after another (the real KeyedGate) and different keys, or different instances, at once.
 */
import { StaleMetaCache } from "./cache.ts";
import { type Choices, FaultError, type Sim } from "./sched.ts";
import { type MetaCommit, SimBucket, SimMeta, SimOpLog } from "./stores.ts";

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
  private readonly watcherGates: KeyedGate[];
  private readonly watchers: WatcherDeps[];
  private readonly mergerGates: KeyedGate[];

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
    this.watcherGates = Array.from({ length: cfg.watchers }, () => new KeyedGate(GATE_LIMIT));
    this.mergerGates = Array.from({ length: cfg.mergers }, () => new KeyedGate(GATE_LIMIT));
    this.watchers = this.watcherGates.map((_, i) => this.watcherDeps(i));
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
    void this.watcherGates[w]!.submit(entry.key, async () => {
      try {
        const outcome = await stampEntry(this.watchers[w]!, entry);
        const list = this.outcomes.get(entry.rev) ?? [];
        list.push(outcome);
        this.outcomes.set(entry.rev, list);
      } catch (err) {
        const where = `${this.site} watcher#${w} rev ${entry.rev}`;
        if (!(err instanceof FaultError) || delivery >= MAX_DELIVERIES) return this.net.fail(where, err);
        void this.sim.step(`${where} nak`).then(() => this.watch(entry, delivery + 1));
      }
    });
  }

  /** An op arrived on the site's inbound stream: one merger instance applies it; a failure is redelivered. */
  deliver(op: Op, delivery = 1): void {
    const m = this.choices.next(this.mergerGates.length);
    void this.mergerGates[m]!.submit(`${op.bucket}/${op.key}`, async () => {
      try {
        this.merges.push(await applyOp(this.mergeDeps, op));
      } catch (err) {
        const where = `${this.site} merger#${m} ${op.op} ${op.key} ${op.ts}/${op.node_id}`;
        // like the real consumer: a fault or a conflict (409, decided later) is nak'd and redelivered
        const retry = err instanceof FaultError || (isSyncdError(err) && err.code === "SYNCD_ERR_CONFLICT");
        if (!retry || delivery >= MAX_DELIVERIES) return this.net.fail(where, err);
        void this.sim.step(`${where} nak`).then(() => this.deliver(op, delivery + 1));
      }
    });
  }

  /** the site's compacted OUT log, as the ordered publish reads it */
  private readonly outLog = new SimOpLog();

  private watcherDeps(i: number): WatcherDeps {
    const ticker = new BlockTicker(this.clock, this.cfg.blockSize);
    return {
      site: this.site,
      nodeId: this.nodeId,
      bucket: this.cfg.bucket,
      meta: this.cached("watcher"),
      tick: () => ticker.tick(),
      jsm: this.outLog.reader,
      js: {
        publish: async (
          subject: string,
          payload?: Payload,
          opts?: Partial<JetStreamPublishOptions>,
        ): Promise<PubAck> => {
          await this.sim.step(`${this.site} watcher#${i} publish ${opts?.msgID ?? ""}`);
          const data =
            typeof payload === "string" ? new TextEncoder().encode(payload) : (payload ?? new Uint8Array());
          this.outLog.record(subject, data);
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
