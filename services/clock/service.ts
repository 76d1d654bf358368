/**
 * Wiring of syncd-clock: the persisted clock bucket and the tick / observe / now endpoints. The
 * clock also watches the site's JetStream usage (the account and the streams syncd relies on) and
 * raises STORE_FILLING when a store nears its limits.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import { addEndpoint } from "../lib/adapter.ts";
import {
  Conditions,
  EVENT_TTL_MS,
  Severity,
  type StoreUsage,
  healthOf,
  reportStores,
  storeSeverity,
  streamUsage,
} from "../lib/health.ts";
import type { Logger } from "../lib/logger.ts";
import { METRIC_NAMES } from "../lib/metrics.ts";
import type { Running, ServiceContext, ServiceDef } from "../lib/runtime.ts";
import type { ClockObserveRequest, ClockTickRequest, EmptyRequest } from "../lib/schemas.gen.ts";
import { openOrCreateKv } from "../lib/site.ts";
import { CLOCK_BUCKET, Streams, endpointSubject, kvStream, metaBucket } from "../lib/subjects.ts";
import { type ClockDeps, Serial, now, observeTs, tick } from "./handlers.ts";

const health = healthOf("clock");

/** Add the endpoints of syncd-clock; its counters (STATS data of `tick`) are this instance's. */
export async function wireClock(ctx: ServiceContext): Promise<Running> {
  const { config, log, service, site } = ctx;
  const counts: ClockDeps["counts"] = {
    ticks: 0,
    observed: 0,
    conflicts: 0,
    skew_refused: 0,
    jump_refused: 0,
  };
  const kv = await openOrCreateKv(site.kvm, CLOCK_BUCKET, { replicas: site.replicas, log });
  const deps: ClockDeps = {
    kv,
    remake: async () => {
      log.error({ bucket: CLOCK_BUCKET }, "the clock bucket was deleted: making it again");
      health.raise(Conditions.streamRecreated, Severity.warn, {
        message: `${kvStream(CLOCK_BUCKET)} was deleted and made again: the clock goes on from the next timestamp handed out or observed (HLC: physical time)`,
        subject: kvStream(CLOCK_BUCKET),
        ttlMs: EVENT_TTL_MS,
      });
      return openOrCreateKv(site.kvm, CLOCK_BUCKET, { replicas: site.replicas, log });
    },
    mode: config.clock,
    maxSkewMs: config.maxClockSkewMs,
    maxJump: config.maxClockJump,
    now: Date.now,
    cache: null,
    counts,
    serial: new Serial(),
    onSkew: (ts, aheadMs) =>
      log.warn({ ts, ahead_ms: aheadMs }, "refused a timestamp far ahead of physical time"),
    onJump: (ts, hw) => log.warn({ ts, hw }, "refused a timestamp that jumps too far past the clock"),
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
  const stores = [
    ...config.buckets.flatMap((b) => [kvStream(b), kvStream(metaBucket(b))]),
    kvStream(CLOCK_BUCKET),
    Streams.out(config.site),
    Streams.in(config.site),
    Streams.dlq(config.site),
    Streams.conflicts(config.site),
  ];
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const check = async () => {
    const usage = await checkStores(site.jsm, stores, log).catch((err) => {
      log.warn({ err }, "store check failed");
      return [];
    });
    if (stopped) return;
    // a store full enough to be an error: look again soon, so that the error clears soon after it is mended
    const full = usage.some((u) => storeSeverity(u) === Severity.error);
    timer = setTimeout(() => void check(), full ? STORE_RECHECK_MS : STORE_CHECK_MS);
    timer.unref();
  };
  void check();
  ctx.metrics.counterFrom(METRIC_NAMES.clockTicks, "timestamps given out", [], () => counts.ticks);
  ctx.metrics.counterFrom(
    METRIC_NAMES.clockObserved,
    "remote timestamps observed",
    [],
    () => counts.observed,
  );
  ctx.metrics.counterFrom(
    METRIC_NAMES.skewRefused,
    "observed timestamps refused as too far ahead (HLC skew, Lamport jump)",
    [],
    () => counts.skew_refused,
  );
  return {
    stop: async () => {
      stopped = true;
      clearTimeout(timer);
    },
    statsData: (ep) => (ep === "tick" ? { ...counts } : null),
  };
}

/** How often the clock checks the site's JetStream usage. */
export const STORE_CHECK_MS = 30_000;

/** How often while a store is full (STORE_FILLING error): the error clears within this once it is mended. */
export const STORE_RECHECK_MS = 5000;

/** Read the account's and the streams' usage and report it to the health model. */
export async function checkStores(
  jsm: JetStreamManager,
  streams: string[],
  log: Logger,
): Promise<StoreUsage[]> {
  const usage: StoreUsage[] = [];
  const a = await jsm.getAccountInfo();
  usage.push(
    { name: "account storage", bytes: a.storage, maxBytes: a.limits.max_storage, refusesWhenFull: true },
    { name: "account memory", bytes: a.memory, maxBytes: a.limits.max_memory, refusesWhenFull: true },
  );
  for (const name of streams) {
    try {
      usage.push(streamUsage(await jsm.streams.info(name)));
    } catch (err) {
      log.debug({ err, stream: name }, "stream not readable for the store check");
    }
  }
  reportStores(health, usage);
  return usage;
}

/** syncd-clock, for `runService` and the site agent. */
export const clockService: ServiceDef = {
  kind: "clock",
  description: "the site's persisted hybrid logical (or Lamport) clock",
  wire: wireClock,
};
