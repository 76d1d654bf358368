/**
 * Client side of syncd-clock for the watcher and the merger: timestamps drawn from blocks reserved
 * in one request, and observations coalesced into one request in flight, so neither costs a round
 * trip per op. Neither compares this host's wall clock with the clock service's: a block's age is
 * measured on this host's monotonic clock, and the observer learns the service's wall clock from its
 * replies, so both work whatever the offset between the hosts (up to `--max-clock-skew` and beyond).
 */
import type { NatsConnection } from "@nats-io/nats-core";
import { HLC_TICKS_PER_MS } from "./clock-rules.ts";
import { ErrorCode, SyncdError } from "./errors.ts";
import { ServiceReplyError, requestJson } from "./request.ts";
import type { ClockObserveResponse, ClockTickResponse } from "./schemas.gen.ts";
import { endpointSubject } from "./subjects.ts";

/**
 * Hands out timestamps from reserved blocks. An HLC block is dropped `maxBlockAgeMs` after it
 * arrived (this host's monotonic clock), so its timestamps stay that close to the clock service's
 * physical time, whatever this host's wall clock says. A caller that waited for a block gets a
 * timestamp from it however slow the round trip was.
 */
export class Ticker {
  private next = 0;
  private end = 0;
  private receivedAt = 0;
  private pending: Promise<void> | null = null;
  private waiting = 0;

  constructor(
    private readonly nc: NatsConnection,
    private readonly site: string,
    private readonly opts: {
      hlc: boolean;
      maxBlock?: number;
      maxBlockAgeMs?: number;
      /** a monotonic clock in ms (default performance.now) */
      monotonic?: () => number;
    } = {
      hlc: true,
    },
  ) {}

  private usable(): boolean {
    if (this.next >= this.end) return false;
    if (!this.opts.hlc) return true;
    return this.mono() - this.receivedAt <= (this.opts.maxBlockAgeMs ?? 20);
  }

  private mono(): number {
    return (this.opts.monotonic ?? performance.now.bind(performance))();
  }

  /** One timestamp, unique at this site, greater than any this ticker handed out before. */
  async tick(): Promise<number> {
    let waited = false;
    for (;;) {
      if (this.usable() || (waited && this.next < this.end)) return this.next++;
      waited = true;
      this.waiting++;
      if (!this.pending)
        this.pending = this.refill().finally(() => {
          this.pending = null;
        });
      try {
        await this.pending;
      } finally {
        this.waiting--;
      }
    }
  }

  private async refill(): Promise<void> {
    const count = Math.min(this.opts.maxBlock ?? 1000, Math.max(16, this.waiting * 2));
    const { value } = await requestJson<ClockTickResponse>(
      this.nc,
      endpointSubject(this.site, "clock", "tick"),
      {
        count,
      },
    );
    this.next = value.start;
    this.end = value.start + value.count;
    this.receivedAt = this.mono();
  }
}

/** The clock refused a ts (HLC skew or Lamport jump): SYNCD_ERR_CLOCK_SKEW, with the ts. */
export class RefusedTs extends SyncdError {
  constructor(
    readonly ts: number,
    cause: ServiceReplyError,
  ) {
    const prefix = `SYNCD_ERR_CLOCK_SKEW: ${ErrorCode.SYNCD_ERR_CLOCK_SKEW.text}: `;
    super(
      "SYNCD_ERR_CLOCK_SKEW",
      cause.message.startsWith(prefix) ? cause.message.slice(prefix.length) : cause.message,
      { cause },
    );
  }
}

/** Advances the site clock past received timestamps; concurrent calls share one request. */
export class Observer {
  private known = 0;
  private want = 0;
  private inflight: Promise<void> | null = null;
  /** a lower bound of (clock service's wall clock − this host's), ms; learnt from replies */
  private offsetMs: number | null = null;

  constructor(
    private readonly nc: NatsConnection,
    private readonly site: string,
    private readonly opts: { hlc: boolean; now?: () => number } = { hlc: true },
  ) {}

  /**
   * Resolves once the site clock is past ts. In HLC mode a ts that is not ahead of the clock
   * service's physical time (as far as its replies tell) needs no request: every later tick is at
   * least its physical_ms * 1000 anyway. A ts the clock refuses (too far ahead, or a Lamport jump)
   * rejects with SyncdError SYNCD_ERR_CLOCK_SKEW.
   */
  async observe(ts: number): Promise<void> {
    if (ts <= this.known) return;
    if (this.opts.hlc && this.offsetMs !== null && ts < (this.now() + this.offsetMs) * HLC_TICKS_PER_MS)
      return;
    while (ts > this.known) {
      if (ts > this.want) this.want = ts;
      if (!this.inflight)
        this.inflight = this.flush().finally(() => {
          this.inflight = null;
        });
      try {
        await this.inflight;
      } catch (err) {
        // another (greater) ts of the same request was refused: ask again for this one
        if (err instanceof RefusedTs && err.ts !== ts) continue;
        throw err;
      }
    }
  }

  private now(): number {
    return (this.opts.now ?? Date.now)();
  }

  /**
   * The clock service's wall clock as far as its replies tell (this host's until the first reply):
   * what skew checks compare with, so every process of a site decides as its clock service does.
   */
  clockNowMs(): number {
    return this.now() + (this.offsetMs ?? 0);
  }

  private async flush(): Promise<void> {
    const target = this.want;
    let value: ClockObserveResponse;
    try {
      ({ value } = await requestJson<ClockObserveResponse>(
        this.nc,
        endpointSubject(this.site, "clock", "observe"),
        {
          ts: target,
        },
      ));
    } catch (err) {
      // a refused ts must not hold back the others waiting on this request
      if (this.want === target) this.want = this.known;
      if (err instanceof ServiceReplyError && err.status === 422) throw new RefusedTs(target, err);
      throw err;
    }
    // the service read its wall clock before this reply arrived: a lower bound of the offset
    if (value.physical_ms !== undefined) this.offsetMs = value.physical_ms - this.now();
    if (value.ts > this.known) this.known = value.ts;
    if (target > this.known) this.known = target;
  }
}
