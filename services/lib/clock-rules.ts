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
