/**
 * Wiring of syncd-clock: the persisted clock bucket and the tick / observe / now endpoints.
 */
import { addEndpoint } from "../lib/adapter.ts";
import type { Running, ServiceContext } from "../lib/runtime.ts";
import type { ClockObserveRequest, ClockTickRequest, EmptyRequest } from "../lib/schemas.gen.ts";
import { openOrCreateKv } from "../lib/site.ts";
import { CLOCK_BUCKET, endpointSubject } from "../lib/subjects.ts";
import { type ClockDeps, Serial, now, observeTs, tick } from "./handlers.ts";

/** The clock's counters, shown in STATS data. */
export const counts: ClockDeps["counts"] = { ticks: 0, observed: 0, conflicts: 0, skew_refused: 0 };

/** Add the endpoints of syncd-clock. */
export async function wireClock(ctx: ServiceContext): Promise<Running> {
  const { config, log, service, site } = ctx;
  const kv = await openOrCreateKv(site.kvm, CLOCK_BUCKET, log, { history: 1, replicas: site.replicas });
  const deps: ClockDeps = {
    kv,
    mode: config.clock,
    maxSkewMs: config.maxClockSkewMs,
    now: Date.now,
    cache: null,
    counts,
    serial: new Serial(),
    onSkew: (ts, aheadMs) =>
      log.warn({ ts, ahead_ms: aheadMs }, "refused a timestamp far ahead of physical time"),
  };
  const subject = (e: string) => endpointSubject(config.site, "clock", e);
  const d = { log };
  addEndpoint<ClockTickRequest, unknown>(
    service,
    {
      name: "tick",
      subject: subject("tick"),
      request: "clock/tick.request.json",
      response: "clock/tick.response.json",
      description: "reserve count consecutive timestamps",
      handler: (req) => tick(deps, req.count ?? 1),
    },
    d,
  );
  addEndpoint<ClockObserveRequest, unknown>(
    service,
    {
      name: "observe",
      subject: subject("observe"),
      request: "clock/observe.request.json",
      response: "clock/observe.response.json",
      description: "advance the clock past a received timestamp",
      handler: (req) => observeTs(deps, req.ts),
    },
    d,
  );
  addEndpoint<EmptyRequest, unknown>(
    service,
    {
      name: "now",
      subject: subject("now"),
      request: "empty.request.json",
      response: "clock/now.response.json",
      description: "the persisted high-water mark",
      handler: () => now(deps),
    },
    d,
  );
  return { stop: async () => {} };
}
