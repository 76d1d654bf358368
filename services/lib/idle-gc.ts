/**
 * Give back the heap a busy period grew, in every service process (runtime.ts). A catch-up (a
 * site's services started on 100 000 loaded keys, a site back from a partition) grows V8's heap far
 * above what stays live (measured in the agent: old space 120 MB committed, 35 MB live), and V8
 * returns it only when its memory reducer happens to run, often not at all while the process idles. So: every `periodMs`, when the process used less than
 * `idleCpuPct` of a core over the period and its heap grew by `growthMb` or more since the last
 * collection made here, collect once (a full, compacting GC: tens of ms, only while idle). That
 * collection leaves V8's young generation at the size the busy period grew it to (32 MB of new space
 * in a service); V8 shrinks it only in a collection that sees a low allocation rate over its last 5 s,
 * so a second collection follows once the process stayed idle `followUpMs` (10 s) after the first.
 */
import { getHeapSpaceStatistics, getHeapStatistics, setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

/** How idle-gc decides. */
export type IdleGcOptions = {
  periodMs?: number;
  /** below this share of one core over a period (percent), the process counts as idle */
  idleCpuPct?: number;
  /** collect when the V8 heap grew by this much (MB, default 16: a reconciler's periodic run grows the young generation by ~31 MB) since the last collection made here */
  growthMb?: number;
  /** the second collection, once idle this long after the first (ms, whole periods; default 10 s: V8 rates allocation over its last 5 s, the idle stretch must cover that) */
  followUpMs?: number;
  /** told after each collection: heap before and after (MB), how long it took (ms), which of the two */
  onCollect?: (c: {
    heap_mb_before: number;
    heap_mb_after: number;
    ms: number;
    why: "growth" | "follow-up";
    /** the young generation's size after it (MB) */
    new_space_mb: number;
  }) => void;
};

/** The collector V8 exposes with --expose-gc, taken without the command-line flag. */
function exposedGc(): (() => void) | undefined {
  const g = (globalThis as { gc?: () => void }).gc;
  if (typeof g === "function") return g;
  setFlagsFromString("--expose-gc");
  const fn = runInNewContext("gc") as unknown;
  return typeof fn === "function" ? (fn as () => void) : undefined;
}

/** Start the idle collector (a no-op where V8 does not expose its collector); `collections` counts what it did. */
export function startIdleGc(opts: IdleGcOptions = {}): { stop: () => void; collections: () => number } {
  const periodMs = opts.periodMs ?? 5_000;
  const idlePct = opts.idleCpuPct ?? 5;
  const growth = (opts.growthMb ?? 16) * 1_048_576;
  const gc = exposedGc();
  let n = 0;
  if (!gc) return { stop: () => {}, collections: () => 0 };
  const followUpMs = opts.followUpMs ?? 10_000;
  let base = getHeapStatistics().total_heap_size;
  let cpu = process.cpuUsage();
  /** idle periods needed before the follow-up collection (V8 rates allocation over its last 5 s) */
  const followUpTicks = Math.max(1, Math.ceil(followUpMs / periodMs));
  /** idle periods since the growth collection, while its follow-up is due */
  let sinceGrowth: number | undefined;
  const collect = (why: "growth" | "follow-up", total: number): void => {
    const t0 = performance.now();
    gc();
    n++;
    base = getHeapStatistics().total_heap_size;
    sinceGrowth = why === "growth" ? 0 : undefined;
    opts.onCollect?.({
      heap_mb_before: Math.round(total / 1_048_576),
      heap_mb_after: Math.round(base / 1_048_576),
      ms: Math.round(performance.now() - t0),
      why,
      new_space_mb: Math.round(
        (getHeapSpaceStatistics().find((s) => s.space_name === "new_space")?.space_size ?? 0) / 1_048_576,
      ),
    });
  };
  const timer = setInterval(() => {
    const used = process.cpuUsage(cpu);
    cpu = process.cpuUsage();
    const pct = ((used.user + used.system) / 1000 / periodMs) * 100;
    const total = getHeapStatistics().total_heap_size;
    if (total < base) base = total;
    if (pct >= idlePct) {
      if (sinceGrowth !== undefined) sinceGrowth = 0;
      return;
    }
    if (total - base >= growth) collect("growth", total);
    else if (sinceGrowth !== undefined && ++sinceGrowth >= followUpTicks) collect("follow-up", total);
  }, periodMs);
  timer.unref();
  return { stop: () => clearInterval(timer), collections: () => n };
}
