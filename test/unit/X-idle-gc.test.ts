/**
 * X (a service process's memory): idle-gc (services/lib/idle-gc.ts) gives back the heap a busy period
 * grew once the process idles, and leaves a heap that did not grow alone.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { getHeapStatistics } from "node:v8";
import { startIdleGc } from "../../services/mod.ts";

const waitFor = async (cond: () => boolean, maxMs: number): Promise<void> => {
  for (let t = 0; t < maxMs && !cond(); t += 20) await new Promise((r) => setTimeout(r, 20));
};

describe("X idle gc", () => {
  it("X after a busy period that grew the heap, one collection once idle returns it", async () => {
    const done: { heap_mb_before: number; heap_mb_after: number }[] = [];
    const g = startIdleGc({ periodMs: 100, idleCpuPct: 50, growthMb: 16, onCollect: (c) => done.push(c) });
    try {
      // the busy period: garbage enough to grow the heap by well over 16 MB
      let junk: { i: number; s: string }[] | null = [];
      for (let i = 0; i < 1_500_000; i++) junk.push({ i, s: `x${i}` });
      const grown = getHeapStatistics().total_heap_size;
      junk = null;
      await waitFor(() => g.collections() > 0, 10_000);
      assert.equal(g.collections(), 1, "one collection after the busy period");
      assert.ok(done[0]!.heap_mb_after < done[0]!.heap_mb_before, JSON.stringify(done[0]));
      assert.ok(getHeapStatistics().total_heap_size < grown);
      // idle, the heap no longer growing: nothing more
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(g.collections(), 1);
    } finally {
      g.stop();
    }
  });
});
