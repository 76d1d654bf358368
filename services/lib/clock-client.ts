/**
 * Client side of syncd-clock for the watcher and the merger: timestamps drawn from blocks reserved
 * in one request, and observations coalesced into one request in flight, so neither costs a round
 * trip per op.
 */
import type { NatsConnection } from "@nats-io/nats-core";
import { HLC_TICKS_PER_MS } from "./clock-rules.ts";
import { requestJson } from "./request.ts";
import type { ClockObserveResponse, ClockTickResponse } from "./schemas.gen.ts";
import { endpointSubject } from "./subjects.ts";

/** Hands out timestamps from reserved blocks. HLC blocks are dropped once physical time passes them. */
export class Ticker {
  private next = 0;
  private end = 0;
  private reservedAt = 0;
  private pending: Promise<void> | null = null;
  private waiting = 0;

  constructor(
    private readonly nc: NatsConnection,
    private readonly site: string,
    private readonly opts: { hlc: boolean; maxBlock?: number; maxBlockAgeMs?: number; now?: () => number } = {
      hlc: true,
    },
  ) {}

  private usable(): boolean {
    if (this.next >= this.end) return false;
    if (!this.opts.hlc) return true;
    const now = (this.opts.now ?? Date.now)();
    return (
      now - this.reservedAt <= (this.opts.maxBlockAgeMs ?? 20) && this.next >= (now - 50) * HLC_TICKS_PER_MS
    );
  }

  /** One timestamp, unique at this site, greater than any this ticker handed out before. */
  async tick(): Promise<number> {
    for (;;) {
      if (this.usable()) return this.next++;
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
    this.reservedAt = (this.opts.now ?? Date.now)();
  }
}

/** Advances the site clock past received timestamps; concurrent calls share one request. */
export class Observer {
  private known = 0;
  private want = 0;
  private inflight: Promise<void> | null = null;

  constructor(
    private readonly nc: NatsConnection,
    private readonly site: string,
    private readonly opts: { hlc: boolean; now?: () => number } = { hlc: true },
  ) {}

  /**
   * Resolves once the site clock is past ts. In HLC mode a ts that is not ahead of this machine's
   * physical time needs no request: every later tick is at least physical_ms * 1000 anyway.
   */
  async observe(ts: number): Promise<void> {
    if (ts <= this.known) return;
    if (this.opts.hlc && ts < (this.opts.now ?? Date.now)() * HLC_TICKS_PER_MS) return;
    if (ts > this.want) this.want = ts;
    while (ts > this.known) {
      if (!this.inflight)
        this.inflight = this.flush().finally(() => {
          this.inflight = null;
        });
      await this.inflight;
    }
  }

  private async flush(): Promise<void> {
    const target = this.want;
    const { value } = await requestJson<ClockObserveResponse>(
      this.nc,
      endpointSubject(this.site, "clock", "observe"),
      {
        ts: target,
      },
    );
    if (value.ts > this.known) this.known = value.ts;
    if (target > this.known) this.known = target;
  }
}
