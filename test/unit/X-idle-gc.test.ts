/**
 * X (a service process's memory): idle-gc (services/lib/idle-gc.ts) gives back the heap a busy period
 * grew once the process idles, then collects once more after a further idle stretch so that V8 sees
 * a low allocation rate and shrinks its young generation, and leaves a heap that did not grow alone.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { getHeapSpaceStatistics, getHeapStatistics } from "node:v8";
import { startIdleGc } from "../../services/mod.ts";

const waitFor = async (cond: () => boolean, maxMs: number): Promise<void> => {
  for (let t = 0; t < maxMs && !cond(); t += 20) await new Promise((r) => setTimeout(r, 20));
};

describe("X idle gc", () => {
  it("X after a busy period that grew the heap, one collection once idle returns it, a follow-up shrinks new space", async () => {
    const done: { heap_mb_before: number; heap_mb_after: number; why: string }[] = [];
    const newSpace = (): number =>
      getHeapSpaceStatistics().find((s) => s.space_name === "new_space")?.space_size ?? 0;
    const g = startIdleGc({
      periodMs: 100,
      idleCpuPct: 50,
      growthMb: 16,
      followUpMs: 5_500,
      onCollect: (c) => done.push(c),
    });
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
      assert.equal(done[0]!.why, "growth");
      const young = newSpace();
      // a trickle of allocation while idle (as a service's heartbeats): V8's rate over 5 s is low, not zero
      let trickle: object[] = [];
      const t = setInterval(() => {
        trickle = Array.from({ length: 50 }, (_, i) => ({ i }));
      }, 10);
      try {
        await waitFor(() => g.collections() > 1, 20_000);
      } finally {
        clearInterval(t);
      }
      assert.equal(trickle.length, 50);
      assert.equal(g.collections(), 2, "the follow-up collection");
      assert.equal(done[1]!.why, "follow-up");
      assert.ok(newSpace() < young, `new space ${newSpace()} not below ${young} after the follow-up`);
      // idle, the heap no longer growing: nothing more
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(g.collections(), 2);
    } finally {
      g.stop();
    }
  });
});
