/**
 * syncd-clock: the site clock. One persisted high-water mark (`syncd_clock`/`hw`) that every
 * instance moves forward with compare-and-set, so timestamps are unique and increasing per site
 * whatever the number of instances, and never go back across restarts.
 */
import type { KV } from "@nats-io/kv";
import {
  ClockMode,
  LAMPORT_CATCH_UP_MS,
  admissible,
  catchUp,
  observe,
  reserve,
  skewMs,
} from "../lib/clock-rules.ts";
import { SyncdError } from "../lib/errors.ts";
import { Conditions, Severity, healthOf } from "../lib/health.ts";
import { isNoResponders, isStreamNotFound } from "../lib/jserrors.ts";
import type { ClockNowResponse, ClockObserveResponse, ClockTickResponse } from "../lib/schemas.gen.ts";
import { isCasConflict } from "../lib/stores.ts";
import { CLOCK_KEY } from "../lib/subjects.ts";

const health = healthOf("clock");

/** What the clock handlers need. */
export type ClockDeps = {
  kv: KV;
  mode: ClockMode;
  maxSkewMs: number;
  /** Lamport: how far one observed ts may be above the mark */
  maxJump: number;
  now: () => number;
  /** Lamport: when this instance last moved the mark towards a refused ts */
  lastCatchUpMs?: number;
  /** this instance's last known state of the persisted mark (a hint; the CAS decides) */
  cache: { hw: number; revision: number } | null;
  counts: { ticks: number; observed: number; conflicts: number; skew_refused: number; jump_refused: number };
  onSkew?: (ts: number, aheadMs: number) => void;
  onJump?: (ts: number, hw: number) => void;
  /** serializes this instance's updates, so only instances (not requests) race on the CAS */
  serial: Serial;
  /**
   * make the clock bucket again when it was deleted under the service; the mark restarts from what
   * is handed out or observed next (HLC: physical time)
   */
  remake?: () => Promise<KV>;
};

/** Runs async functions one at a time, in call order. */
export class Serial {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.tail.then(fn);
    this.tail = p.catch(() => undefined);
    return p;
  }
}

const MAX_ATTEMPTS = 200;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function load(deps: ClockDeps): Promise<{ hw: number; revision: number } | null> {
  const e = await deps.kv.get(CLOCK_KEY);
  deps.cache = e && e.operation === "PUT" ? { hw: Number(e.string()), revision: e.revision } : null;
  return deps.cache;
}

/**
 * Move the persisted mark with `next(hw)`; retries on lost races. Returns the value written and the
 * old mark. The clock bucket deleted: made again (deps.remake), then tried once more.
 */
async function advance(
  deps: ClockDeps,
  next: (hw: number) => number | null,
): Promise<{ hw: number; before: number }> {
  try {
    return await advanceOnce(deps, next);
  } catch (err) {
    if (!deps.remake || !(isStreamNotFound(err) || isNoResponders(err))) throw err;
    deps.kv = await deps.remake();
    deps.cache = null;
    return advanceOnce(deps, next);
  }
}

async function advanceOnce(
  deps: ClockDeps,
  next: (hw: number) => number | null,
): Promise<{ hw: number; before: number }> {
  let cur = deps.cache ?? (await load(deps));
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const before = cur?.hw ?? 0;
    const hw = next(before);
    if (hw === null) return { hw: before, before };
    try {
      const data = new TextEncoder().encode(String(hw));
      const revision = cur
        ? await deps.kv.update(CLOCK_KEY, data, cur.revision)
        : await deps.kv.create(CLOCK_KEY, data);
      deps.cache = { hw, revision };
      return { hw, before };
    } catch (err) {
      if (!isCasConflict(err)) throw err;
      deps.counts.conflicts++;
      if (attempt > 2) await sleep(Math.random() * Math.min(20, attempt));
      cur = await load(deps);
    }
  }
  throw new SyncdError("SYNCD_ERR_CONFLICT", "clock update lost too many races");
}

/** Reserve `count` timestamps: start .. start+count-1, above everything handed out or observed. */
export async function tick(deps: ClockDeps, count: number): Promise<ClockTickResponse> {
  let start = 0;
  await advance(deps, (hw) => {
    const r = reserve(deps.mode, hw, count, deps.now());
    start = r.start;
    return r.hw;
  });
  deps.counts.ticks += count;
  return { start, count, mode: deps.mode, physical_ms: deps.now() };
}

/** How long a skew or jump condition stays raised after the last refusal. */
export const REFUSAL_CONDITION_TTL_MS = 10 * 60_000;

/** Refuse a ts too far ahead of physical time (HLC): not yet acceptable (see clock-rules `admissible`). */
export function checkSkew(
  deps: Pick<ClockDeps, "mode" | "maxSkewMs" | "now" | "counts" | "onSkew">,
  ts: number,
): void {
  const ahead = skewMs(deps.mode, ts, deps.now());
  if (ahead > deps.maxSkewMs) {
    deps.counts.skew_refused++;
    deps.onSkew?.(ts, ahead);
    const reason = `ts ${ts} is ${ahead} ms ahead (limit ${deps.maxSkewMs} ms)`;
    health.raise(Conditions.clockSkew, Severity.error, {
      message: `refused ${reason}: a clock in the mesh is off`,
      ttlMs: REFUSAL_CONDITION_TTL_MS,
      data: { ts, ahead_ms: ahead },
    });
    throw new SyncdError("SYNCD_ERR_CLOCK_SKEW", reason);
  }
}

/**
 * Advance the clock past a received ts. HLC: a ts too far ahead of physical time is refused and
 * does not move the clock. Lamport: a ts more than `maxJump` above the mark is refused; the mark
 * then moves at most `maxJump` towards it, once per LAMPORT_CATCH_UP_MS per instance.
 */
export async function observeTs(deps: ClockDeps, ts: number): Promise<ClockObserveResponse> {
  checkSkew(deps, ts);
  if (deps.mode === ClockMode.hlc) {
    const { hw } = await advance(deps, (cur) => (observe(cur, ts) === cur ? null : ts));
    deps.counts.observed++;
    return { ts: hw, mode: deps.mode, physical_ms: deps.now() };
  }
  let refused: string | null = null;
  let caughtUp = false;
  const { hw, before } = await advance(deps, (cur) => {
    const a = admissible(deps.mode, ts, { nowMs: deps.now(), hw: cur, maxSkewMs: 0, maxJump: deps.maxJump });
    if (a.ok) {
      refused = null;
      return observe(cur, ts) === cur ? null : ts;
    }
    refused = a.reason;
    if (deps.now() - (deps.lastCatchUpMs ?? Number.NEGATIVE_INFINITY) < LAMPORT_CATCH_UP_MS) return null;
    const next = catchUp(cur, ts, deps.maxJump);
    caughtUp = next !== cur;
    return caughtUp ? next : null;
  });
  if (refused === null) {
    deps.counts.observed++;
    return { ts: hw, mode: deps.mode, physical_ms: deps.now() };
  }
  if (caughtUp) deps.lastCatchUpMs = deps.now();
  deps.counts.jump_refused++;
  deps.onJump?.(ts, before);
  health.raise(Conditions.clockJump, Severity.error, {
    message: `refused ${refused}: a hand-made op or a broken clock; it waits (parked) while the clock catches up by at most ${deps.maxJump} a minute`,
    ttlMs: REFUSAL_CONDITION_TTL_MS,
    data: { ts, hw },
  });
  throw new SyncdError("SYNCD_ERR_CLOCK_SKEW", refused);
}

/** The persisted mark: every timestamp handed out so far is <= ts. */
export async function now(deps: ClockDeps): Promise<ClockNowResponse> {
  const cur = await load(deps);
  return { ts: cur?.hw ?? 0, mode: deps.mode, physical_ms: deps.now(), conditions: health.list() };
}
