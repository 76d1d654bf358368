/**
 * Pure clock rules, shared by the clock service and the tests. The persisted state is one number,
 * the high-water mark `hw`: every timestamp ever handed out or observed is <= hw, so a restart
 * never goes back.
 *
 * - HLC (default): `ts = physical_ms * 1000 + logical`, a safe JSON integer for the next 285 years.
 * - Lamport (`--clock lamport`): a plain counter, the original agents' form.
 */
export const ClockMode = { hlc: "hlc", lamport: "lamport" } as const;
export type ClockMode = (typeof ClockMode)[keyof typeof ClockMode];

/** Logical ticks per physical millisecond in HLC mode. */
export const HLC_TICKS_PER_MS = 1000;

/**
 * Reserve `count` timestamps above `hw`: returns the first and the new high-water mark.
 * In HLC mode the first is at least the physical time.
 */
export function reserve(
  mode: ClockMode,
  hw: number,
  count: number,
  nowMs: number,
): { start: number; hw: number } {
  const floor = mode === ClockMode.hlc ? nowMs * HLC_TICKS_PER_MS : 0;
  const start = Math.max(hw + 1, floor);
  const next = start + count - 1;
  if (!Number.isSafeInteger(next)) throw new RangeError(`clock overflow: ${next} is not a safe integer`);
  return { start, hw: next };
}

/** The high-water mark after observing a received ts. */
export function observe(hw: number, ts: number): number {
  return ts > hw ? ts : hw;
}

/**
 * How far `ts` is ahead of physical time, in ms (HLC mode); <= 0 when it is not ahead.
 * Lamport timestamps have no relation to time: always 0.
 */
export function skewMs(mode: ClockMode, ts: number, nowMs: number): number {
  if (mode !== ClockMode.hlc) return 0;
  return Math.floor(ts / HLC_TICKS_PER_MS) - nowMs;
}

/** Default of `--max-clock-jump` (Lamport): how far one received ts may be ahead of the site's clock. */
export const DEFAULT_MAX_CLOCK_JUMP = 1_000_000_000;

/** How often (ms) a Lamport clock moves one `--max-clock-jump` towards an op it refused. */
export const LAMPORT_CATCH_UP_MS = 60_000;

/**
 * Whether a received ts may be applied now: the one rule of the clock-skew checks. Not a verdict
 * for ever: a refused op is parked and tried again, and becomes acceptable —
 *
 * - HLC: once it is no more than `maxSkewMs` ahead of this site's physical time, i.e. after
 *   `waitMs`. A site whose own clock is behind only waits (its lag minus the limit), never refuses
 *   for ever; an op from a clock that is far ahead waits until time catches up with it.
 * - Lamport: once it is no more than `maxJump` above the site's clock `hw`. A refused op moves the
 *   clock by at most `maxJump` per {@link LAMPORT_CATCH_UP_MS} towards it ({@link catchUp}), so a
 *   site that is merely behind (new, restored) catches up, while one op stamped 2^53−1 cannot push
 *   a clock to its end: it stays parked, counted and raised.
 */
export function admissible(
  mode: ClockMode,
  ts: number,
  at: { nowMs: number; hw: number; maxSkewMs: number; maxJump: number },
): { ok: true } | { ok: false; aheadMs: number; waitMs: number; reason: string } {
  if (mode === ClockMode.hlc) {
    const ahead = skewMs(mode, ts, at.nowMs);
    if (ahead <= at.maxSkewMs) return { ok: true };
    return {
      ok: false,
      aheadMs: ahead,
      waitMs: ahead - at.maxSkewMs,
      reason: `ts ${ts} is ${ahead} ms ahead of physical time (limit ${at.maxSkewMs} ms)`,
    };
  }
  if (ts - at.hw <= at.maxJump) return { ok: true };
  return {
    ok: false,
    aheadMs: 0,
    waitMs: LAMPORT_CATCH_UP_MS,
    reason: `ts ${ts} jumps ${ts - at.hw} past the clock ${at.hw} (limit ${at.maxJump})`,
  };
}

/** Lamport: the mark after moving one bounded step towards a refused ts (never past ts - maxJump). */
export function catchUp(hw: number, ts: number, maxJump: number): number {
  return Math.max(hw, Math.min(hw + maxJump, ts - maxJump));
}
