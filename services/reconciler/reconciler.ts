/**
 * The reconciler of one instance: its peers (discovered every few seconds, sourced into the site's
 * IN stream), its runs (on demand with every peer; periodic with jitter, one peer per round in a
 * rotating order; and on a peer's heal), their progress and counts. Runs are serialized per instance: a run asked for while one is in progress waits for it,
 * then runs itself, so its answer always describes a reconciliation that started after the request.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/nats-core";
import { SyncdError } from "../lib/errors.ts";
import { Conditions, EVENT_TTL_MS, Severity, healthOf } from "../lib/health.ts";
import type { Logger } from "../lib/logger.ts";
import type {
  ReconcilerRunRequest,
  ReconcilerRunResponse,
  ReconcilerStatusResponse,
} from "../lib/schemas.gen.ts";
import type { MeshTransport } from "../lib/transport.ts";
import type { Membership } from "./members.ts";
import { type DiscoveryResult, PeerBook, ping } from "./peers.ts";
import { type Progress, RateLimiter, type RunRecord, emptyRecord, reconcile } from "./run.ts";
import type { TombstoneGc } from "./tombstones.ts";
import type { KeyVersion } from "./tree.ts";
import type { ValueSource } from "./values.ts";
import type { BucketIndex } from "./versions.ts";

const health = healthOf("reconciler");

/** Tunables, with the defaults main.ts uses. */
export type ReconcilerTuning = {
  /** merges per second during a run, 0 = unlimited (default 2000) */
  rate: number;
  /** merges in flight during a run (default 64) */
  concurrency: number;
  /** timeout of one request to a peer or a merger, ms (default 10 000) */
  timeoutMs: number;
  /** list a differing node's keys when both sides hold at most this many (default 16) */
  smallCount: number;
  /** ms between discovery rounds (default 5000) */
  discoveryMs: number;
  /** ms to collect PING replies (default 500) */
  pingWaitMs: number;
  /** ms between runs, 0 = no periodic runs; each wait is jittered by ±20 % */
  intervalMs: number;
  /** a heal triggers at most one run per peer in this many ms (default 15 000) */
  healMinGapMs: number;
  /** whether a peer's heal starts a run with it (default true; off only to test store-and-forward alone) */
  healRuns: boolean;
  /** a put whose value the bucket has not held for this long, after a run, is raised (default 10 000) */
  lostGraceMs: number;
};

/** Defaults of the tunables (intervalMs comes from the config). */
export const DEFAULT_TUNING: Omit<ReconcilerTuning, "intervalMs"> = {
  rate: 2000,
  concurrency: 64,
  timeoutMs: 10_000,
  smallCount: 16,
  discoveryMs: 5000,
  pingWaitMs: 500,
  healMinGapMs: 15_000,
  healRuns: true,
  lostGraceMs: 10_000,
};

/** Lost keys named in one log line, at most. */
const LOST_SAMPLE = 10;

/** What the reconciler needs. */
export type ReconcilerDeps = {
  nc: NatsConnection;
  jsm: JetStreamManager;
  site: string;
  nodeId: string;
  instance: string;
  buckets: string[];
  indexes: Map<string, BucketIndex>;
  values: Map<string, ValueSource>;
  log: Logger;
  tuning: ReconcilerTuning;
  /** the mesh membership (members bucket at the hub); without it, or until joined, peers come by PING */
  membership?: Membership;
  /** tombstone collection, for its counts in status */
  gc?: TombstoneGc;
  /**
   * a tombstone one side holds and the other has not at all that counts as absence (older than the
   * collection's minimum age: one side may have collected it), so anti-entropy does not bring it back
   */
  absentLike?: (v: KeyVersion) => boolean;
  /** how requests reach other sites (direct or relayed by the hub); default: direct only */
  transport?: MeshTransport;
};

const PROGRESS_LOG_MS = 5000;

/** A peer unreachable this long is raised as an error (a person should look), before that as a warning. */
export const PEER_LOST_ERROR_MS = 15 * 60_000;

/** Totals of this instance. */
export type ReconcilerCounts = {
  runs: number;
  run_errors: number;
  pulled: number;
  pushed: number;
  skipped: number;
  bytes: number;
  peers_added: number;
  /** peers forgotten because their member record went (syncd site remove) */
  peers_removed: number;
  heals: number;
  /** runs that ended with puts whose value no site could give back (logged as errors) */
  lost_raised: number;
};

/** Anti-entropy of one instance. */
export class Reconciler {
  readonly book: PeerBook;
  readonly counts: ReconcilerCounts = {
    runs: 0,
    run_errors: 0,
    pulled: 0,
    pushed: 0,
    skipped: 0,
    bytes: 0,
    peers_added: 0,
    peers_removed: 0,
    heals: 0,
    lost_raised: 0,
  };
  lastRun: ReconcilerRunResponse | undefined;
  lastRunAt: string | undefined;
  private readonly limiter: RateLimiter;
  private chain: Promise<unknown> = Promise.resolve();
  private running = false;
  private progress: (Progress & { startedMs: number }) | undefined;
  private discovering: Promise<DiscoveryResult> | undefined;
  private readonly lastHealRun = new Map<string, number>();
  private discoveryTimer: NodeJS.Timeout | undefined;
  private periodicTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private lastPeriodicPeer: string | undefined;
  /** peers raised as PEER_LOST: since when, and at which severity */
  private readonly lostPeers = new Map<string, { since: number; severity: Severity }>();

  constructor(private readonly deps: ReconcilerDeps) {
    this.book = new PeerBook(deps.site);
    this.limiter = new RateLimiter(deps.tuning.rate);
  }

  /** Reconcile now (serialized with any run in progress). */
  run(req: ReconcilerRunRequest): Promise<ReconcilerRunResponse> {
    const m = this.deps.membership;
    if (m && (m.state === "refused" || m.state === "removed"))
      throw new SyncdError(
        "SYNCD_ERR_UNAVAILABLE",
        `anti-entropy is off: this site is ${m.state} by the mesh${m.refusal ? ` (${m.refusal})` : ""}`,
      );
    if (req.bucket !== undefined && !this.deps.buckets.includes(req.bucket))
      throw new SyncdError("SYNCD_ERR_UNKNOWN_BUCKET", `"${req.bucket}"`);
    const p = this.chain.then(() => this.runNow(req));
    this.chain = p.catch(() => {});
    return p;
  }

  /** What `status` answers. */
  status(): ReconcilerStatusResponse {
    const keys: Record<string, number> = {};
    const lost: Record<string, number> = {};
    const index: NonNullable<ReconcilerStatusResponse["index"]> = {};
    let lostTotal = 0;
    for (const [b, ix] of this.deps.indexes) {
      keys[b] = ix.tree.size;
      index[b] = { rebuilds: ix.rebuilds, rescans: ix.rescans, invalid: ix.invalid };
      const n = ix.lostKeys(this.deps.tuning.lostGraceMs).length;
      lost[b] = n;
      lostTotal += n;
    }
    const unreachable = this.book.unreachable();
    const m = this.deps.membership;
    const outcast = m !== undefined && (m.state === "refused" || m.state === "removed");
    const res: ReconcilerStatusResponse = {
      site: this.deps.site,
      node_id: this.deps.nodeId,
      instance: this.deps.instance,
      keys,
      index,
      lost,
      severity: lostTotal > 0 || outcast ? "error" : unreachable.length > 0 ? "warn" : "ok",
      ...(m
        ? {
            membership: {
              state: m.state,
              ...(m.identity ? { identity: m.identity } : {}),
              ...(m.refusal ? { refusal: m.refusal } : {}),
            },
          }
        : {}),
      peers: this.book.sites(),
      unreachable,
      running: this.running,
      counts: { ...this.counts, ...this.routeCounts() },
    };
    const gc = this.deps.gc;
    if (gc) {
      res.tombstones = gc.status();
      if (gc.lowest) res.gc_blocked_by = gc.lowest.sites;
    }
    const p = this.currentProgress();
    if (p) res.progress = p;
    if (this.lastRun) res.last_run = this.lastRun;
    if (this.lastRunAt) res.last_run_at = this.lastRunAt;
    return res;
  }

  /** The micro STATS data of every endpoint. */
  statsData(): Record<string, unknown> {
    return {
      ...this.counts,
      ...this.routeCounts(),
      running: this.running,
      last_run_at: this.lastRunAt ?? null,
    };
  }

  /** Requests to other sites by route (direct, through the hub relay) and route changes. */
  private routeCounts(): Record<string, number> {
    const t = this.deps.transport;
    if (!t) return {};
    return {
      requests_direct: t.counts.direct,
      requests_relayed: t.counts.relay,
      route_switches: t.counts.switched,
    };
  }

  /** One discovery round (shared when one is in progress), then the peers' sources. */
  discover(): Promise<DiscoveryResult> {
    if (!this.discovering) {
      this.discovering = this.discoverRound().finally(() => {
        this.discovering = undefined;
      });
    }
    return this.discovering;
  }

  /** Start discovery (every 1, 2, 4, then `discoveryMs` ms) and the periodic runs. */
  start(): void {
    let gap = Math.min(1000, this.deps.tuning.discoveryMs);
    const loop = async () => {
      if (this.stopped) return;
      try {
        const r = await this.discover();
        this.counts.heals += r.healed.length;
        // a member's heal is the hub's return: one run, with the next peer (flat in N)
        const member = this.deps.membership?.state === "member";
        const runWith = !member ? r.healed.map((p) => p.site) : r.healed.length > 0 ? [this.nextPeer()!] : [];
        for (const site of runWith) this.onHeal(site);
      } catch (err) {
        this.deps.log.warn({ err }, "peer discovery failed");
      }
      await this.verify(this.deps.buckets);
      this.reportHealth();
      if (!this.stopped) this.discoveryTimer = setTimeout(loop, gap);
      gap = Math.min(gap * 2, this.deps.tuning.discoveryMs);
    };
    void loop();
    this.schedulePeriodic();
  }

  /** Stop the timers. A run in progress finishes on its own. */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.discoveryTimer);
    clearTimeout(this.periodicTimer);
  }

  private schedulePeriodic(): void {
    const every = this.deps.tuning.intervalMs;
    if (every <= 0 || this.stopped) return;
    const wait = Math.round(every * (0.8 + 0.4 * Math.random()));
    this.periodicTimer = setTimeout(() => {
      const peer = this.nextPeer();
      (peer === undefined ? Promise.resolve() : this.run({ peers: [peer] }))
        .catch((err: unknown) => this.deps.log.warn({ err }, "periodic run failed"))
        .finally(() => this.schedulePeriodic());
    }, wait);
  }

  /**
   * The peer of the next periodic run: one per round, in a rotating order (the peers sorted by
   * name, starting after the last one run against), so a site's anti-entropy work per period does
   * not grow with the mesh and every peer comes up once every N−1 rounds.
   */
  nextPeer(): string | undefined {
    const sites = this.book
      .sites()
      .filter((s) => s !== this.deps.site)
      .sort();
    if (sites.length === 0) return undefined;
    const next =
      sites.find((s) => this.lastPeriodicPeer === undefined || s > this.lastPeriodicPeer) ?? sites[0]!;
    this.lastPeriodicPeer = next;
    return next;
  }

  private onHeal(site: string): void {
    if (!this.deps.tuning.healRuns) return;
    const last = this.lastHealRun.get(site) ?? 0;
    if (Date.now() - last < this.deps.tuning.healMinGapMs) return;
    this.lastHealRun.set(site, Date.now());
    this.deps.log.info({ peer: site }, "peer reachable again, reconciling with it");
    this.run({ peers: [site] }).catch((err: unknown) =>
      this.deps.log.warn({ err, peer: site }, "heal run failed"),
    );
  }

  /** The members bucket changed: the peers are exactly the other members. */
  syncMembers(): void {
    const m = this.deps.membership;
    if (!m || m.state !== "member") return;
    const r = this.book.sync(m.members);
    for (const p of r.added) {
      this.counts.peers_added++;
      this.deps.log.info({ peer: p.site, domain: p.domain, buckets: p.buckets }, "peer added");
    }
    for (const site of r.removed) {
      this.counts.peers_removed++;
      this.lastHealRun.delete(site);
      if (this.lastPeriodicPeer === site) this.lastPeriodicPeer = undefined;
      this.deps.log.info({ peer: site }, "peer removed: no longer a member of the mesh");
    }
    this.reportHealth();
  }

  /**
   * Raise or clear what the reconciler knows of the mesh: PEER_LOST per unreachable peer (a warning,
   * an error after {@link PEER_LOST_ERROR_MS}), SITE_REFUSED when the mesh refused or removed this site.
   */
  reportHealth(now = Date.now()): void {
    const m = this.deps.membership;
    if (m && (m.state === "refused" || m.state === "removed"))
      health.raise(Conditions.siteRefused, Severity.error, {
        message: `this site is ${m.state} by the mesh${m.refusal ? ` (${m.refusal})` : ""}: anti-entropy is off`,
        subject: this.deps.site,
      });
    else health.clear(Conditions.siteRefused);
    const down = new Set(this.book.unreachable());
    for (const [peer] of this.lostPeers)
      if (!down.has(peer)) {
        this.lostPeers.delete(peer);
        health.clear(Conditions.peerLost, peer);
      }
    for (const peer of down) {
      const was = this.lostPeers.get(peer);
      const since = was?.since ?? now;
      const severity = now - since >= PEER_LOST_ERROR_MS ? Severity.error : Severity.warn;
      if (was?.severity === severity) continue;
      this.lostPeers.set(peer, { since, severity });
      health.raise(Conditions.peerLost, severity, {
        message: `peer ${peer} does not answer (discovery or anti-entropy) since ${new Date(since).toISOString()}: ops to and from it wait in the streams`,
        subject: peer,
      });
    }
  }

  /**
   * A member's peers are reachable through the hub: while the hub's JetStream does not answer, every
   * peer counts as unreachable; when it answers again, they have healed (the run on reconnect).
   */
  private async probeHub(): Promise<DiscoveryResult> {
    const up = await this.deps.membership!.hubReachable(this.deps.tuning.pingWaitMs);
    const peers = [...this.book.peers.values()];
    const r: DiscoveryResult = { added: [], healed: [], lost: [] };
    for (const p of peers) {
      if (!up && p.reachable) {
        this.book.markUnreachable(p.site);
        r.lost.push(p);
      } else if (up && !p.reachable) {
        p.reachable = true;
        r.healed.push(p);
      }
    }
    for (const p of r.lost)
      this.deps.log.warn({ peer: p.site }, "peer not reachable: the hub does not answer");
    return r;
  }

  private async discoverRound(): Promise<DiscoveryResult> {
    const state = this.deps.membership?.state;
    // a member learns its peers from the members bucket's changes; refused or removed: none
    if (state === "member") return this.probeHub();
    if (state === "refused" || state === "removed") {
      this.book.sync(new Map());
      return { added: [], healed: [], lost: [] };
    }
    const found = await ping(this.deps.nc, this.deps.site, this.deps.tuning.pingWaitMs, this.deps.transport);
    const r = this.book.update(found);
    for (const p of r.added) {
      this.counts.peers_added++;
      this.deps.log.info({ peer: p.site, domain: p.domain, buckets: p.buckets }, "peer added");
    }
    for (const p of r.lost) this.deps.log.warn({ peer: p.site }, "peer not answering discovery");
    return r;
  }

  private currentProgress(): Progress | undefined {
    if (!this.progress) return undefined;
    const { startedMs, ...p } = this.progress;
    return { ...p, elapsed_ms: Date.now() - startedMs };
  }

  private async runNow(req: ReconcilerRunRequest): Promise<ReconcilerRunResponse> {
    const { log, tuning } = this.deps;
    this.running = true;
    const ticker = setInterval(() => {
      const p = this.currentProgress();
      if (p) log.info({ progress: p }, "reconcile run in progress");
    }, PROGRESS_LOG_MS);
    const runs: RunRecord[] = [];
    try {
      try {
        await this.discover();
      } catch (err) {
        log.warn({ err }, "peer discovery failed; using the peers known so far");
      }
      const buckets = req.bucket !== undefined ? [req.bucket] : this.deps.buckets;
      await this.verify(buckets);
      const peers = (req.peers ?? this.book.sites()).filter((s) => s !== this.deps.site);
      for (const peer of [...new Set(peers)]) {
        const known = this.book.peers.get(peer);
        // a site neither the members bucket nor discovery knows: say so at once rather than wait
        // for a reply nobody can send (through the hub relay there is no "no responders")
        let unavailable: string | undefined = known
          ? undefined
          : "unknown peer: not a member of the mesh, not found by discovery";
        for (const bucket of buckets) {
          if (known?.buckets && !known.buckets.includes(bucket)) continue;
          const ix = this.deps.indexes.get(bucket);
          const values = this.deps.values.get(bucket);
          if (!ix || !values) continue;
          if (unavailable) {
            runs.push(emptyRecord(peer, bucket, unavailable));
            continue;
          }
          this.progress = { peer, bucket, phase: "digest", elapsed_ms: 0, startedMs: Date.now() };
          const { record: rec, peerUnavailable } = await reconcile(
            {
              caller: { nc: this.deps.nc, timeoutMs: tuning.timeoutMs, transport: this.deps.transport },
              site: this.deps.site,
              tree: ix.tree,
              values,
              log,
              limiter: this.limiter,
              concurrency: tuning.concurrency,
              smallCount: tuning.smallCount,
              ...(this.deps.absentLike ? { absentLike: this.deps.absentLike } : {}),
            },
            peer,
            bucket,
            this.progress,
          );
          runs.push(rec);
          this.count(rec);
          reportRun(rec);
          if (peerUnavailable) {
            unavailable = rec.error;
            this.book.markUnreachable(peer);
          } else if (!rec.error && this.book.markReachable(peer)) {
            this.counts.heals++;
            this.deps.log.info({ peer }, "peer reachable again");
          }
          const level = rec.error
            ? "warn"
            : rec.entries_moved > 0 || (rec.skipped ?? 0) > 0
              ? "info"
              : "debug";
          log[level]({ run: rec }, "reconcile run finished");
        }
      }
      this.raiseLost(buckets);
      this.reportHealth();
    } finally {
      clearInterval(ticker);
      this.running = false;
      this.progress = undefined;
    }
    const res = { runs };
    this.lastRun = res;
    this.lastRunAt = new Date().toISOString();
    return res;
  }

  /** Check that the buckets still hold what the index says (values gone without an op). */
  private async verify(buckets: string[]): Promise<void> {
    for (const b of buckets) {
      try {
        await this.deps.indexes.get(b)?.verify();
      } catch (err) {
        this.deps.log.warn({ err, bucket: b }, "could not check the bucket's stream state");
      }
    }
  }

  /** After a run: puts still lost past the grace time had nothing to repair them from. */
  private raiseLost(buckets: string[]): void {
    for (const b of buckets) {
      const keys = this.deps.indexes.get(b)?.lostKeys(this.deps.tuning.lostGraceMs) ?? [];
      if (keys.length === 0) {
        health.clear(Conditions.valuesLost, b);
        continue;
      }
      this.counts.lost_raised++;
      health.raise(Conditions.valuesLost, Severity.error, {
        message: `${keys.length} value(s) of ${b} are gone here without an op and no reachable peer holds them, e.g. "${keys[0]}": write them again or restore them`,
        subject: b,
        data: { keys: keys.slice(0, LOST_SAMPLE), count: keys.length },
      });
      this.deps.log.error(
        { bucket: b, lost: keys.length, keys: keys.slice(0, LOST_SAMPLE) },
        "values lost without an op and held by no reachable peer: write them again or restore them",
      );
    }
  }

  private count(rec: RunRecord): void {
    this.counts.runs++;
    if (rec.error) this.counts.run_errors++;
    this.counts.pulled += rec.pulled;
    this.counts.pushed += rec.pushed;
    this.counts.skipped += rec.skipped ?? 0;
    this.counts.bytes += rec.bytes;
  }
}

/** Raise what a finished run found: entries it moved (repaired), differing keys it left (found). */
function reportRun(rec: RunRecord): void {
  const subject = `${rec.bucket}/${rec.peer}`;
  if (rec.entries_moved > 0)
    health.raise(Conditions.divergenceRepaired, Severity.warn, {
      message: `anti-entropy with ${rec.peer} repaired ${rec.entries_moved} differing entries of ${rec.bucket} (pulled ${rec.pulled}, pushed ${rec.pushed})`,
      subject,
      ttlMs: EVENT_TTL_MS,
      data: { pulled: rec.pulled, pushed: rec.pushed },
    });
  if ((rec.skipped ?? 0) > 0)
    health.raise(Conditions.divergenceFound, Severity.warn, {
      message: `anti-entropy with ${rec.peer} left ${rec.skipped} differing keys of ${rec.bucket} for a later run (in flux, too large or refused)`,
      subject,
      ttlMs: EVENT_TTL_MS,
    });
  else if (!rec.error) health.clear(Conditions.divergenceFound, subject);
}
