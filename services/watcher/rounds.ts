/**
 * The schedule of a watcher's hub registration rounds (services/watcher/outlog.ts keepRegistered
 * does the reads): pure, so that its rules are unit-tested (test/unit/I1-registration-rounds.test.ts).
 */
import type { LastOpAtHub } from "../lib/site.ts";

/** While the hub's source is stalled but the log holds nothing new, re-check this often for new ops. */
export const IDLE_STALLED_RECHECK_MS = 5_000;
/** After a cheap round found the hub behind the log, look again this soon (a full round if it did not move). */
const BEHIND_RECHECK_MS = 3_000;
/**
 * A registered site whose source is healthy reads the aggregate's info (which lists every source, so
 * its size grows with the number of sites N) once per FULL_ROUND_EVERY periods, and once per
 * N / SITES_PER_FULL_ROUND periods at most: the hub then serves O(N) bytes per period for all sites
 * together. The rounds in between are O(1) reads (`lastOpAtHub`, services/lib/site.ts).
 */
const FULL_ROUND_EVERY = 4;
const SITES_PER_FULL_ROUND = 4;

/**
 * When a registration round must be full and when the next round is due: the pure part of
 * keepRegistered (outlog.ts). A full round reads the aggregate's info (its size grows with the number of
 * sites); a cheap one reads the aggregate's copy of the log's last op (`lastOpAtHub`).
 */
export class RegistrationRounds {
  private fullAt = Number.NEGATIVE_INFINITY;
  private fullEveryMs: number;
  private needFull = true;
  /** the hub was unreachable since a full round last saw its source of the log heard from */
  private unconfirmed = false;
  /** the log sequence the hub held when the last cheap round found it behind */
  private behind: number | undefined;

  constructor(private readonly periodMs: number) {
    this.fullEveryMs = periodMs;
  }

  /** Whether the next round must be full: never settled since the start or a reconnect, or its period is over. */
  fullDue(now = Date.now()): boolean {
    return this.needFull || now - this.fullAt >= this.fullEveryMs;
  }

  /**
   * After a cheap check: the delay until the next round, or undefined when a full round is needed
   * now — the check could not tell, the aggregate was made again, the hub is behind after an outage
   * (its source of the log may need a re-arm) or did not move since it was found behind.
   */
  afterCheap(r: LastOpAtHub | undefined): number | undefined {
    if (!r || r.restarted) return undefined;
    if (r.held) {
      this.behind = undefined;
      // the hub's source not seen working since an outage: new ops are looked for sooner
      return this.unconfirmed ? Math.min(this.periodMs, IDLE_STALLED_RECHECK_MS) : this.periodMs;
    }
    if (this.unconfirmed) return undefined;
    const was = this.behind;
    this.behind = r.upTo;
    if (was === undefined) return BEHIND_RECHECK_MS;
    return r.upTo > was ? this.periodMs : undefined;
  }

  /** After a full round; `settled`: the entry was there and the source heard from (nothing to watch closely). */
  afterFull(o: { sources: number; settled: boolean; now?: number }): void {
    this.fullAt = o.now ?? Date.now();
    this.fullEveryMs =
      this.periodMs * Math.max(FULL_ROUND_EVERY, Math.ceil(o.sources / SITES_PER_FULL_ROUND));
    this.needFull = !o.settled;
    if (o.settled) this.unconfirmed = false;
    this.behind = undefined;
  }

  /** A round failed (the hub unreachable). */
  failed(): void {
    this.unconfirmed = true;
  }

  /** The connection to the site's server came back. */
  reconnected(): void {
    this.needFull = true;
  }
}
