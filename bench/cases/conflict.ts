/**
 * Case 3: conflict-heavy. Sites a and b write the same 100 keys as fast as they can (pipelined) for a
 * fixed count each; throughput of the writers, then the time from the writers' end until both sites
 * hold identical contents and versions and are quiet (consumers drained, sources caught up).
 * Periodic anti-entropy is off: this is the op path alone.
 */
import type { KV } from "@nats-io/kv";
import { siteQuiet } from "../../services/mod.ts";
import { type BenchMesh, QUIET, backlog, call, startBenchMesh, stopQuietly, warmUp } from "../lib/mesh.ts";
import { kfmt, log, nowMs, pipelined, round, sleep, value100, withProgress } from "../lib/util.ts";
import { WINDOW } from "./throughput.ts";
import type { BenchContext, CaseDef } from "./types.ts";

const KEYS = 100;

export type ConflictResult = {
  keys: number;
  ops_per_site: number;
  window: number;
  /** 2 × ops_per_site / (writers' start → both writers' last ack) */
  write_ops_s: number;
  /** writers' end → identical and quiet at both sites (null: not within limit_s) */
  converge_ms: number | null;
  limit_s: number;
  /** times both sites were quiet but their contents differed (a divergence while polling) */
  quiet_but_different: number;
  differing_keys_at_end: number;
  merger_counts: Record<string, Record<string, number>>;
  watcher_counts: Record<string, Record<string, number>>;
};

type Snapshot = Map<string, string>;

async function snapshot(kv: KV, meta: KV | undefined): Promise<Snapshot> {
  const out: Snapshot = new Map();
  await pipelined(KEYS, 50, async (i) => {
    const k = `hot.${i}`;
    const [e, m] = await Promise.all([kv.get(k), meta?.get(k)]);
    const v = e?.operation === "PUT" ? e.string().slice(0, 16) : "<none>";
    // the version only: `_meta` also holds site-local fields (rev, ...)
    const ver =
      m?.operation === "PUT"
        ? (({ ts, node_id, deleted }: { ts: number; node_id: string; deleted: boolean }) =>
            `${ts}|${node_id}|${deleted}`)(m.json())
        : "<none>";
    out.set(k, `${v}|${ver}`);
  });
  return out;
}

function diffCount(x: Snapshot, y: Snapshot): number {
  let d = 0;
  for (const [k, v] of x) if (y.get(k) !== v) d++;
  return d;
}

export const conflictCase: CaseDef = {
  name: "conflict",
  title: "3. Conflict-heavy: two sites writing the same 100 keys",
  async run(ctx: BenchContext): Promise<ConflictResult> {
    const perSite = ctx.quick ? 2_000 : 10_000;
    let bm: BenchMesh | undefined;
    try {
      log("conflict: starting hub + sites a, b with services");
      bm = await startBenchMesh();
      const a = bm.conn.a!;
      const b = bm.conn.b!;
      await warmUp(bm, "a", `warm.${Date.now()}`);
      let doneA = 0;
      let doneB = 0;
      const t0 = nowMs();
      let tEnd = 0;
      await withProgress(
        "conflict/write",
        () => `a ${doneA}/${perSite}, b ${doneB}/${perSite} written`,
        async () => {
          await Promise.all([
            pipelined(perSite, WINDOW, (i) =>
              a.kv.put(`hot.${i % KEYS}`, value100(`a.${i}`)).then(() => void doneA++),
            ),
            pipelined(perSite, WINDOW, (i) =>
              b.kv.put(`hot.${i % KEYS}`, value100(`b.${i}`)).then(() => void doneB++),
            ),
          ]);
          tEnd = nowMs();
        },
      );
      const writeOps = Math.round((2 * perSite) / ((tEnd - t0) / 1000));
      log(`conflict: writers done, ${kfmt(writeOps)} puts/s over both sites; waiting for convergence`);
      let converged: number | null = null;
      let quietButDifferent = 0;
      let lastDiff = -1;
      let streak = 0;
      const limitMs = ctx.quick ? 45_000 : 90_000;
      const bmm = bm;
      await withProgress(
        "conflict/converge",
        async () => {
          const [ba, bb] = await Promise.all([backlog(bmm.conn.a!.jsm, "a"), backlog(bmm.conn.b!.jsm, "b")]);
          return `backlog a ${JSON.stringify(ba)} b ${JSON.stringify(bb)}; last diff ${lastDiff} keys`;
        },
        async () => {
          while (nowMs() - tEnd < limitMs) {
            const q = (await Promise.all([siteQuiet(a.nc, "a", QUIET), siteQuiet(b.nc, "b", QUIET)])).every(
              Boolean,
            );
            if (q) {
              const [sa, sb] = await Promise.all([snapshot(a.kv, a.meta), snapshot(b.kv, b.meta)]);
              lastDiff = diffCount(sa, sb);
              if (lastDiff === 0) {
                streak++;
                if (streak === 1) converged = nowMs() - tEnd;
                if (streak >= 2) break;
              } else {
                streak = 0;
                converged = null;
                quietButDifferent++;
              }
            } else {
              streak = 0;
              converged = null;
            }
            await sleep(50);
          }
        },
      );
      const counts = async (kind: "merger" | "watcher", site: string) => {
        try {
          const r = await call<{
            counts?: Record<string, number>;
            buckets?: { counts: Record<string, number> }[];
          }>(a.nc, site, kind, "status");
          return r.value.counts ?? r.value.buckets?.[0]?.counts ?? {};
        } catch (err) {
          return { error: String((err as Error).message) } as unknown as Record<string, number>;
        }
      };
      const res: ConflictResult = {
        keys: KEYS,
        ops_per_site: perSite,
        window: WINDOW,
        write_ops_s: writeOps,
        converge_ms: converged === null ? null : round(converged),
        limit_s: limitMs / 1000,
        quiet_but_different: quietButDifferent,
        differing_keys_at_end: lastDiff,
        merger_counts: { a: await counts("merger", "a"), b: await counts("merger", "b") },
        watcher_counts: { a: await counts("watcher", "a"), b: await counts("watcher", "b") },
      };
      log(
        `conflict: ${kfmt(writeOps)} puts/s; identical and quiet ${res.converge_ms === null ? "NOT within the limit" : `${res.converge_ms} ms after the writers' end`}`,
      );
      return res;
    } finally {
      await stopQuietly(bm);
    }
  },
};
