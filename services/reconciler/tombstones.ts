/**
 * Tombstone collection (#12.5). A tombstone (a `_meta` entry with `deleted: true` and the bucket's
 * delete marker) is removed at a site, without producing an op, once no op of its key older than it
 * can reach that site any more. The rule, evaluated by every site on its own (README "Tombstone
 * collection"):
 *
 * - every member publishes in its member record (`applied`) the hub aggregate sequence up to which
 *   its merger has applied its FEED (the merger consumer's ack floor, read through the FEED
 *   messages' `Nats-Stream-Source` header), and only once its own OPS is fully sourced by the hub;
 * - a tombstone sits at hub sequence `h`: the greatest hub sequence of any op of its key in the
 *   site's FEED;
 * - pass i reads the lowest mark over the current members `m_i` (this site included), then the
 *   hub's last sequence `L_i`. Once `m_i ≥ h` every member has applied the tombstone, so every op of
 *   the key older than it was already at the hub, at a sequence ≤ `L_i`. The tombstone is collected
 *   when a later pass finds `m_j ≥ L_i`: every member has then applied every op older than it;
 * - and only when its `_meta` entry is older than the minimum age.
 *
 * Collection: the bucket's delete marker is purged by subject with a sequence guard (a later write
 * survives; no watch event, so the watcher makes no op), then `_meta` gets a purge marker with the
 * tombstone's revision as the expected one (a later version survives; the watches of every
 * process drop the key), and that marker is purged in the next pass.
 */
import type { JetStreamManager, StoredMsg } from "@nats-io/jetstream";
import { jetstreamManager } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import { Conditions, Severity, healthOf } from "../lib/health.ts";
import { isNoMessageFound, isNotFound } from "../lib/jserrors.ts";
import type { Logger } from "../lib/logger.ts";
import { lastOpAtHub, sourcedUpTo } from "../lib/site.ts";
import { isDeleteMarker } from "../lib/stores.ts";
import { Durables, Headers, Streams, hubSeqOf, kvStream, kvSubject, metaBucket } from "../lib/subjects.ts";
import type { Membership } from "./members.ts";
import type { BucketIndex } from "./versions.ts";

const health = healthOf("reconciler");

/**
 * How long a `_meta` purge marker stays: two discovery rounds, in each of which every index of the
 * site catches up. An index that misses one anyway forgets the key at its next pass (below).
 */
const MARKER_HOLD_MS = 10_000;

/** The settings: SYNCD_TOMBSTONE_MIN_AGE_MS (default 7 days) and SYNCD_TOMBSTONE_GC_MS (between passes, 0 = off). */
export type GcTuning = { minAgeMs: number; intervalMs: number };
export const DEFAULT_GC: GcTuning = { minAgeMs: 7 * 24 * 3600_000, intervalMs: 60_000 };

/** Tombstone counts of one bucket (reconciler.status `tombstones`). */
export type TombstoneCounts = {
  /** tombstones in the version index */
  total: number;
  /** younger than the minimum age */
  young: number;
  /** old enough, but some member has not applied them (or what is older than them) yet */
  blocked: number;
  /** allowed by the rule at the last pass (collected in it unless a write came in between) */
  collectible: number;
  /** collected by this instance since it started */
  collected: number;
};

/** What the collector needs. */
export type GcDeps = {
  nc: NatsConnection;
  jsm: JetStreamManager;
  site: string;
  hubDomain: string;
  buckets: string[];
  indexes: Map<string, BucketIndex>;
  metas: Map<string, KV>;
  membership?: Membership | undefined;
  log: Logger;
  tuning: GcTuning;
  /** HLC clock: a version's ts tells its age, so young tombstones are skipped without a read */
  hlc?: boolean;
};

async function getMsg(jsm: JetStreamManager, stream: string, q: object): Promise<StoredMsg | null> {
  try {
    return await jsm.streams.getMessage(stream, q as { seq: number });
  } catch (err) {
    if (isNotFound(err) || isNoMessageFound(err)) return null;
    throw err;
  }
}

/**
 * The hub sequence up to which this site's merger has applied its FEED: every FEED message at or
 * below the consumer's ack floor is applied, so everything the hub holds below the hub sequence of
 * the first message above the ack floor is (messages in between were replaced by later ops of the
 * same key and origin). Undefined when the FEED or its consumer is missing.
 */
export async function appliedHubSeq(jsm: JetStreamManager, site: string): Promise<number | undefined> {
  const feed = Streams.in(site);
  let floor: number;
  let last: number;
  try {
    const ci = await jsm.consumers.info(feed, Durables.merger);
    floor = ci.ack_floor.stream_seq;
    last = (await jsm.streams.info(feed)).state.last_seq;
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
  if (last === 0) return 0;
  if (floor >= last) return hubSeqOf((await getMsg(jsm, feed, { seq: last }))?.header);
  const next = await getMsg(jsm, feed, { seq: floor + 1, next_by_subj: ">" });
  const h = hubSeqOf(next?.header);
  return h === undefined ? undefined : h - 1;
}

/** A pass's lowest mark `m` and the hub's last sequence `l` read after it. */
export type Phase = { m: number; l: number };

/**
 * The two-phase barrier: given the earlier passes and this one's `(m, l)`, the greatest hub
 * sequence `safe` such that some pass i had `m_i ≥ safe` and `m ≥ l_i` now — every tombstone at a
 * hub sequence ≤ `safe` may be collected — and the history to keep (the best pass already reached
 * and those not reached yet, at most 64).
 */
export function barrier(history: Phase[], m: number, l: number): { safe: number; history: Phase[] } {
  const all = [...history, { m, l }];
  let safe = 0;
  let best: Phase | undefined;
  for (const p of all)
    if (p.l <= m && p.m >= safe) {
      safe = p.m;
      best = p;
    }
  const waiting = all.filter((p) => p.l > m);
  return { safe, history: [...(best ? [best] : []), ...waiting].slice(-64) };
}

/** Sites per interval of the tombstone passes ({@link TombstoneGc.start}). */
const SITES_PER_PASS = 16;

/** Tombstone collection of one reconciler instance. */
export class TombstoneGc {
  readonly counts = new Map<string, TombstoneCounts>();
  /** (m_i, L_i) of earlier passes, oldest first */
  private history: Phase[] = [];
  private published: number | undefined;
  /** `_meta` purge markers to remove once every follower of `_meta` at the site has read them */
  private markers: { bucket: string; key: string; seq: number; at: number }[] = [];
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private failing = false;
  /** passes in a row that found this site still joining the mesh */
  private joiningPasses = 0;
  private hubJsm: JetStreamManager | undefined;
  /** the lowest mark and the members holding it, at the last pass */
  lowest: { mark: number; sites: string[] } | undefined;

  constructor(private readonly deps: GcDeps) {
    for (const b of deps.buckets)
      this.counts.set(b, { total: 0, young: 0, blocked: 0, collectible: 0, collected: 0 });
  }

  /**
   * Run a pass every `intervalMs` (nothing when 0), and every `intervalMs` × members / 16 in a
   * larger mesh: a pass reads the hub aggregate's info, whose size grows with the number of sites,
   * so the hub serves O(N) bytes per interval for all sites together.
   */
  start(): void {
    const every = this.deps.tuning.intervalMs;
    if (every <= 0) return;
    const loop = async () => {
      if (this.stopped) return;
      try {
        await this.pass();
        if (this.failing) health.clear(Conditions.tombstoneGcFailed, this.deps.site);
        this.failing = false;
      } catch (err) {
        // logged once per spell of failures (hub unreachable, a purge the site's permissions deny)
        this.deps.log[this.failing ? "debug" : "warn"]({ err }, "tombstone collection pass failed");
        this.failing = true;
        health.raise(Conditions.tombstoneGcFailed, Severity.warn, {
          message: `tombstone collection fails: ${(err as Error).message}; tombstones stay until a pass succeeds`,
          subject: this.deps.site,
        });
      }
      const sites = this.deps.membership?.members.size ?? 0;
      if (!this.stopped)
        this.timer = setTimeout(loop, every * Math.max(1, Math.ceil(sites / SITES_PER_PASS)));
    };
    this.timer = setTimeout(loop, Math.min(every, 1000));
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  /** A tombstone whose version is older than the minimum age (HLC ts; Lamport ts carry no time). */
  agedVersion(ts: number, hlc: boolean, now = Date.now()): boolean {
    return hlc && Math.floor(ts / 1000) <= now - this.deps.tuning.minAgeMs;
  }

  /** One pass: publish this site's mark, then collect what the rule allows. */
  async pass(now = Date.now()): Promise<void> {
    const { deps } = this;
    await this.dropMarkers();
    const m = deps.membership;
    if (m?.state === "joining" && this.joiningPasses++ > 0)
      // a site that cannot join (hub unreachable, the members bucket denied) never collects
      throw new Error("this site is not a member of the mesh (the members bucket cannot be reached)");
    if (!m || m.state !== "member") return;
    this.joiningPasses = 0;
    this.hubJsm ??= await jetstreamManager(deps.nc, { domain: deps.hubDomain, timeout: 5000 });
    const applied = await appliedHubSeq(deps.jsm, deps.site);
    if (applied === undefined) return;
    // published only once the hub holds all of this site's own ops (every op made before `applied`):
    // read in O(1) when the log's last op is small, else from the aggregate's info (it lists every site)
    const held =
      (await lastOpAtHub(deps.jsm, this.hubJsm, deps.site))?.held ??
      (
        await sourcedUpTo(
          deps.nc,
          { stream: Streams.hub, domain: deps.hubDomain, timeoutMs: 5000 },
          Streams.out(deps.site),
        )
      ).caughtUp;
    if (held && applied !== this.published) {
      await m.publishApplied(applied);
      this.published = applied;
    }
    const marks = new Map<string, number>([[deps.site, this.published ?? 0]]);
    for (const [site, rec] of m.members) marks.set(site, rec.applied ?? 0);
    const low = Math.min(...marks.values());
    this.lowest = { mark: low, sites: [...marks].filter(([, v]) => v === low).map(([s]) => s) };
    const l = (await this.hubJsm.streams.info(Streams.hub)).state.last_seq;
    const next = barrier(this.history, low, l);
    this.history = next.history;
    const safe = next.safe;
    for (const b of deps.buckets) await this.collectBucket(b, safe, now);
  }

  private async collectBucket(bucket: string, safe: number, now: number): Promise<void> {
    const { deps } = this;
    const c = this.counts.get(bucket)!;
    const ix = deps.indexes.get(bucket);
    const meta = deps.metas.get(bucket);
    if (!ix || !meta) return;
    await ix.verify();
    c.total = 0;
    c.young = 0;
    c.blocked = 0;
    c.collectible = 0;
    const tombs = [...ix.tree.all()].filter((e) => e.deleted);
    c.total = tombs.length;
    for (const t of tombs) {
      if (deps.hlc && !this.agedVersion(t.ts, true, now)) {
        c.young++;
        continue;
      }
      const e = await meta.get(t.key);
      if (!e || e.operation !== "PUT") {
        // collected elsewhere at this site, its purge marker gone before this index read it
        if (!e) ix.forgetTombstone(t.key, t);
        continue;
      }
      let v: { ts?: unknown; node_id?: unknown; deleted?: unknown };
      try {
        v = e.json();
      } catch {
        continue;
      }
      if (v.deleted !== true) continue;
      if (now - e.created.getTime() < deps.tuning.minAgeMs) {
        c.young++;
        continue;
      }
      const h = hubSeqOf(
        (await getMsg(deps.jsm, Streams.in(deps.site), { last_by_subj: `rep.kv.ops.*.${bucket}.${t.key}` }))
          ?.header,
      );
      if (h === undefined || h > safe) {
        c.blocked++;
        continue;
      }
      c.collectible++;
      if (await this.collect(bucket, meta, t.key, e.revision, ix)) c.collected++;
    }
  }

  /** Remove the delete marker, then the `_meta` tombstone at `rev`; false when a later write came. */
  private async collect(
    bucket: string,
    meta: KV,
    key: string,
    rev: number,
    ix: BucketIndex,
  ): Promise<boolean> {
    const { jsm, log } = this.deps;
    const stream = kvStream(bucket);
    const subj = kvSubject(bucket, key);
    const last = await getMsg(jsm, stream, { last_by_subj: subj });
    if (last) {
      if (!isDeleteMarker(last.header)) return false;
      // first, so a concurrent check of the stream does not take the removal for a loss
      ix.forgetHeld(key);
      await jsm.streams.purge(stream, { filter: subj, seq: last.seq + 1 });
    }
    try {
      await meta.purge(key, { previousSeq: rev });
    } catch (err) {
      log.debug({ err, bucket, key }, "tombstone changed while being collected; kept");
      return false;
    }
    const marker = await getMsg(jsm, kvStream(metaBucket(bucket)), {
      last_by_subj: kvSubject(metaBucket(bucket), key),
    });
    // only our purge marker: a version committed right after it must stay
    if (marker && marker.seq > rev && marker.header?.get(Headers.kvOperation) === "PURGE")
      this.markers.push({ bucket, key, seq: marker.seq, at: Date.now() });
    ix.forget(key);
    log.debug({ bucket, key }, "tombstone collected");
    return true;
  }

  /**
   * Purge the `_meta` purge markers written at least MARKER_HOLD_MS ago: every reconciler of the
   * site has caught up its index past them by then (every discovery round), and every `_meta`
   * watch has seen them.
   */
  private async dropMarkers(now = Date.now()): Promise<void> {
    const todo = this.markers.filter((m) => now - m.at >= MARKER_HOLD_MS);
    this.markers = this.markers.filter((m) => now - m.at < MARKER_HOLD_MS);
    for (const mk of todo) {
      const stream = kvStream(metaBucket(mk.bucket));
      await this.deps.jsm.streams.purge(stream, {
        filter: kvSubject(metaBucket(mk.bucket), mk.key),
        seq: mk.seq + 1,
      });
    }
  }

  /** Counts per bucket for reconciler.status. */
  status(): Record<string, TombstoneCounts> {
    return Object.fromEntries([...this.counts].map(([b, c]) => [b, { ...c }]));
  }
}
