/** The clock rules: never back, HLC tracks physical time, Lamport counts, skew is measured. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  ClockMode,
  HLC_TICKS_PER_MS,
  admissible,
  catchUp,
  observe,
  reserve,
  skewMs,
} from "../../services/mod.ts";
import { fcParams } from "../fc.ts";

describe("I4 clock rules", () => {
  it("HLC: ts = physical_ms * 1000 + logical, at least the physical time", () => {
    const r = reserve(ClockMode.hlc, 0, 1, 1_700_000_000_000);
    assert.equal(r.start, 1_700_000_000_000 * HLC_TICKS_PER_MS);
    assert.equal(r.hw, r.start);
    assert.ok(Number.isSafeInteger(r.start));
  });

  it("HLC: logical part advances when physical time stands still or goes back", () => {
    const a = reserve(ClockMode.hlc, 0, 1, 1000);
    const b = reserve(ClockMode.hlc, a.hw, 1, 1000);
    const c = reserve(ClockMode.hlc, b.hw, 1, 900);
    assert.equal(b.start, a.start + 1);
    assert.equal(c.start, b.start + 1);
  });

  it("Lamport: a plain counter", () => {
    const a = reserve(ClockMode.lamport, 0, 1, 123456);
    const b = reserve(ClockMode.lamport, a.hw, 3, 123456);
    assert.deepEqual([a.start, b.start, b.hw], [1, 2, 4]);
  });

  it("blocks never overlap and never go back, whatever physical time does (both modes)", () => {
    fc.assert(
      fc.property(
        fc.constantFrom(ClockMode.hlc, ClockMode.lamport),
        fc.array(
          fc.tuple(
            fc.integer({ min: 1, max: 50 }),
            fc.integer({ min: 1_000, max: 2_000 }),
            fc.option(fc.nat()),
          ),
          {
            maxLength: 40,
          },
        ),
        (mode, steps) => {
          let hw = 0;
          let last = -1;
          for (const [count, now, seen] of steps) {
            if (seen !== null) hw = observe(hw, seen);
            const r = reserve(mode, hw, count, now);
            if (r.start <= hw || r.start <= last) return false;
            if (r.hw !== r.start + count - 1) return false;
            last = r.hw;
            hw = r.hw;
          }
          return true;
        },
      ),
      fcParams(),
    );
  });

  it("observe only moves forward", () => {
    assert.equal(observe(10, 5), 10);
    assert.equal(observe(10, 15), 15);
  });

  it("skew: how far a ts is ahead of physical time (HLC only)", () => {
    const now = 1_700_000_000_000;
    assert.equal(skewMs(ClockMode.hlc, (now + 90_000) * HLC_TICKS_PER_MS + 7, now), 90_000);
    assert.ok(skewMs(ClockMode.hlc, now * HLC_TICKS_PER_MS - 5, now) <= 0);
    assert.equal(skewMs(ClockMode.lamport, Number.MAX_SAFE_INTEGER, now), 0);
  });

  it("refuses to leave the safe integer range", () => {
    assert.throws(() => reserve(ClockMode.lamport, Number.MAX_SAFE_INTEGER - 1, 5, 0), RangeError);
  });

  it("admissible (HLC): a refused ts becomes acceptable after waitMs, and stays so", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 10_000_000 }),
        fc.integer({ min: 0, max: 120_000 }),
        fc.integer({ min: 1_700_000_000_000, max: 1_800_000_000_000 }),
        (aheadMs, maxSkewMs, nowMs) => {
          const ts = (nowMs + aheadMs) * HLC_TICKS_PER_MS + 999;
          const at = (t: number) => admissible(ClockMode.hlc, ts, { nowMs: t, hw: 0, maxSkewMs, maxJump: 1 });
          const a = at(nowMs);
          if (a.ok) return aheadMs <= maxSkewMs;
          return (
            a.waitMs > 0 &&
            at(nowMs + a.waitMs).ok &&
            at(nowMs + a.waitMs + 1000).ok &&
            !at(nowMs + a.waitMs - 1).ok
          );
        },
      ),
      fcParams(),
    );
  });

  it("admissible (Lamport) and catchUp: one jump at a time, never past ts - jump, 2^53-1 out of reach", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 1_000_000 }),
        fc.integer({ min: 0, max: 10_000_000 }),
        fc.integer({ min: 1, max: 100_000 }),
        (hw, ahead, maxJump) => {
          const ts = hw + ahead;
          const a = admissible(ClockMode.lamport, ts, { nowMs: 0, hw, maxSkewMs: 0, maxJump });
          if (a.ok !== ahead <= maxJump) return false;
          if (a.ok) return true;
          const next = catchUp(hw, ts, maxJump);
          return next > hw && next - hw <= maxJump && next <= ts - maxJump;
        },
      ),
      fcParams(),
    );
    const far = admissible(ClockMode.lamport, Number.MAX_SAFE_INTEGER, {
      nowMs: 0,
      hw: 5,
      maxSkewMs: 0,
      maxJump: 1e9,
    });
    assert.equal(far.ok, false);
    assert.equal(catchUp(5, Number.MAX_SAFE_INTEGER, 1e9), 5 + 1e9);
    // the edges: a jump of exactly maxJump is taken; a step never lands past ts - maxJump
    const lamport = (ts: number) =>
      admissible(ClockMode.lamport, ts, { nowMs: 0, hw: 100, maxSkewMs: 0, maxJump: 10 });
    assert.equal(lamport(110).ok, true);
    assert.equal(lamport(111).ok, false);
    assert.equal(catchUp(0, 15, 10), 5);
  });
});
