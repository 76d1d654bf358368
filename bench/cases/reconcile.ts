/**
 * Case 5: reconcile cost. K keys per site (identical versions at both sites), loaded directly with
 * the services stopped: each bucket entry with its `Syncd-Ts`/`Syncd-Node` headers and its `_meta`
 * entry `{ts, node_id, deleted, rev}`, as a merger would have written them. Then the services start
 * (the watcher skips the loaded entries as replicated writes; the reconciler indexes `_meta`), 100
 * differences are planted behind the services' back (50 newer at a, 50 newer at b), and
 * `syncd.a.reconciler.run` is called. Its entries and bytes moved and its wall time are set next to
 * the bytes of a full listing of the bucket. The RSS of every service is taken at K keys (case 6).
 */
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import {
  type ReconcilerDigestResponse,
  type ReconcilerEntriesResponse,
  type ReconcilerRunResponse,
  type ReconcilerStatusResponse,
  kvStream,
  kvSubject,
  mergerHeaders,
  mergerVersion,
  metaBucket,
  plantVersion,
} from "../../services/mod.ts";
import {
  BUCKET,
  type BenchMesh,
  call,
  linked,
  openSite,
  processes,
  quiet,
  startBenchMesh,
  stopQuietly,
  streamState,
} from "../lib/mesh.ts";
import { rssOf } from "../lib/procstat.ts";
import { kfmt, log, nowMs, pipelined, round, sleep, value100, waitUntil, withProgress } from "../lib/util.ts";
import type { BenchContext, CaseDef, ProcRss } from "./types.ts";

const DIFFS = 100;
const VALUE_BYTES = 100;

type Run = ReconcilerRunResponse["runs"][number];

export type ReconcileResult = {
  keys_per_site: number;
  differing: number;
  load: { method: string; ms: number; puts_per_s: number };
  /** services start → watchers drained and both indexes hold every key */
  services_ready_ms: number;
  run: Run;
  run_wall_ms: number;
  /** a second run after the repair: what comparing equal sites costs */
  rerun: Run | null;
  /** both sites' root digests were equal before the second run */
  roots_equal_after_repair: boolean;
  /** when they were not: keys whose versions differ between the two sites' full `entries` listings */
  listing_diff_after_repair: number | null;
  /** sum over all entries of key + version JSON + value bytes */
  full_listing_bytes_computed: number;
  /** request + reply payload bytes of `entries` listing the whole bucket (versions only, and with values) */
  full_listing_bytes_versions: number;
  full_listing_bytes_with_values: number | null;
  full_listing_with_values_ms: number | null;
  moved_per_differing: number;
  bytes_vs_listing_pct: number;
  repaired: boolean;
  /** when not repaired: how many (key, site) pairs lack the planted version, and a few of them */
  repair_mismatch_count: number;
  repair_mismatches: string[];
  rss_at_k: ProcRss[];
  rss_after_run: ProcRss[];
};

const enc = new TextEncoder();

function version(i: number, base: number): { ts: number; node_id: string; deleted: boolean } {
  return { ts: base + i, node_id: i % 2 ? "site-a" : "site-b", deleted: false };
}

/**
 * Load K versioned entries and their `_meta` at one site: core publishes in order into a fresh
 * bucket (so entry i has sequence i + 1), flushed in chunks, then checked against the stream state.
 */
export async function loadSite(
  nc: NatsConnection,
  k: number,
  base: number,
  progress: (n: number) => void,
): Promise<void> {
  const CHUNK = 2000;
  for (let i = 0; i < k; i += CHUNK) {
    const end = Math.min(k, i + CHUNK);
    for (let j = i; j < end; j++) {
      const v = version(j, base);
      nc.publish(kvSubject(BUCKET, `rk.${j}`), loadedValue(j), { headers: mergerHeaders(v) });
    }
    await nc.flush();
    progress(end);
  }
  for (let i = 0; i < k; i += CHUNK) {
    const end = Math.min(k, i + CHUNK);
    for (let j = i; j < end; j++) {
      nc.publish(
        kvSubject(metaBucket(BUCKET), `rk.${j}`),
        enc.encode(JSON.stringify(mergerVersion({ ...version(j, base), value: loadedValue(j) }, j + 1))),
      );
    }
    await nc.flush();
    progress(k + end);
  }
}

function loadedValue(j: number): Uint8Array {
  return value100(`v${j}`);
}

/** Page through `entries` for the whole bucket (root prefix), counting payload bytes. */
async function fullListing(
  nc: NatsConnection,
  site: string,
  values: boolean,
  collect?: Map<string, string>,
): Promise<{ bytes: number; entries: number }> {
  let after: string | undefined;
  let bytes = 0;
  let entries = 0;
  for (let page = 0; page < 100_000; page++) {
    const r = await call<ReconcilerEntriesResponse>(
      nc,
      site,
      "reconciler",
      "entries",
      { bucket: BUCKET, prefixes: [""], values, ...(after ? { after } : {}) },
      120_000,
    );
    bytes += r.bytes;
    entries += r.value.entries.length;
    if (collect) for (const e of r.value.entries) collect.set(e.key, `${e.ts}|${e.node_id}|${e.deleted}`);
    if (!r.value.truncated || !r.value.next_after) break;
    after = r.value.next_after;
  }
  return { bytes, entries };
}

/** Make every site of a mesh without services ready for loadSite: its `_meta` bucket, opened. */
export async function prepareLoad(bm: BenchMesh): Promise<void> {
  for (const s of bm.sites) {
    await new Kvm(bm.conn[s]!.nc).create(metaBucket(BUCKET), { history: 1 });
    bm.conn[s] = await openSite(bm.mesh, s, true);
  }
}

/** Wait until a site's reconciler has indexed `k` keys of the bucket (after loadSite). */
export function indexHolds(bm: BenchMesh, site: string, k: number): Promise<void> {
  return waitUntil(
    `reconciler index of ${site} holds ${k} keys`,
    async () =>
      (await call<ReconcilerStatusResponse>(bm.conn[site]!.nc, site, "reconciler", "status")).value.keys[
        BUCKET
      ] === k,
    300_000,
    200,
  );
}

export const reconcileCase: CaseDef = {
  name: "reconcile",
  title: "5. Reconcile cost: 100 differing entries among K keys per site",
  async run(ctx: BenchContext): Promise<ReconcileResult> {
    const K = ctx.quick ? 10_000 : 100_000;
    let bm: BenchMesh | undefined;
    try {
      log(`reconcile: starting hub + sites a, b without services; loading ${kfmt(K)} keys per site directly`);
      bm = await startBenchMesh({ services: false });
      await prepareLoad(bm);
      const base = (Date.now() - 3_600_000) * 1000;
      const loaded: Record<string, number> = { a: 0, b: 0 };
      const tl0 = nowMs();
      await withProgress(
        "reconcile/load",
        () => `a ${loaded.a}/${2 * K}, b ${loaded.b}/${2 * K} publishes`,
        async () => {
          await Promise.all(
            ["a", "b"].map((s) =>
              loadSite(bm!.conn[s]!.nc, K, base, (n) => {
                loaded[s] = n;
              }),
            ),
          );
          for (const s of ["a", "b"]) {
            const sc = bm!.conn[s]!;
            await waitUntil(
              `${K} entries stored at ${s}`,
              async () =>
                (await streamState(sc.jsm, kvStream(BUCKET))).messages >= K &&
                (await streamState(sc.jsm, kvStream(metaBucket(BUCKET)))).messages >= K,
              120_000,
              100,
            );
            const st = await streamState(sc.jsm, kvStream(BUCKET));
            if (st.messages !== K || st.last_seq !== K)
              throw new Error(
                `load at ${s}: bucket holds ${st.messages} messages, last seq ${st.last_seq}, want ${K}`,
              );
            for (const j of [0, K >> 1, K - 1]) {
              const e = await sc.kv.get(`rk.${j}`);
              const m = await sc.meta!.get(`rk.${j}`);
              if (e?.revision !== j + 1 || JSON.parse(m?.string() ?? "{}").rev !== j + 1)
                throw new Error(`load at ${s}: rk.${j} at revision ${e?.revision}, meta ${m?.string()}`);
            }
          }
        },
      );
      const loadMs = nowMs() - tl0;
      log(`reconcile: loaded ${kfmt(4 * K)} entries in ${round(loadMs / 1000)} s; starting the services`);

      const ts0 = nowMs();
      await Promise.all(["a", "b"].map((s) => bm!.mesh.startServices(s)));
      await linked(bm);
      const bmm = bm;
      await withProgress(
        "reconcile/services",
        async () => {
          const st = await Promise.all(
            ["a", "b"].map(async (s) => {
              const r = await call<ReconcilerStatusResponse>(bmm.conn[s]!.nc, s, "reconciler", "status");
              return `${s}: index ${r.value.keys[BUCKET]}`;
            }),
          );
          return st.join(", ");
        },
        async () => {
          await quiet(bmm, 300_000);
          for (const s of ["a", "b"]) await indexHolds(bmm, s, K);
        },
      );
      const readyMs = nowMs() - ts0;
      log(`reconcile: services caught up in ${round(readyMs / 1000)} s`);
      await sleep(1000);
      const rssAtK = rssOf(processes(bm));

      // the difference: DIFFS keys spread over the key space, half newer at a, half newer at b
      const now = Date.now() * 1000;
      const planted: { key: string; site: string; v: { ts: number; node_id: string } }[] = [];
      for (let d = 0; d < DIFFS; d++) {
        const j = Math.floor((d * K) / DIFFS) + 7;
        const site = d % 2 ? "a" : "b";
        planted.push({ key: `rk.${j}`, site, v: { ts: now + d, node_id: `site-${site}` } });
      }
      await pipelined(planted.length, 16, (i) => {
        const p = planted[i]!;
        const sc = bm!.conn[p.site]!;
        // `_meta` first and the bucket write conditional (services/lib/plant.ts): planted bucket first,
        // 4 of 100 keys at 100 000 ended up with a newer version of the planting site at both sites
        return plantVersion(sc.nc, {
          bucket: BUCKET,
          key: p.key,
          ...p.v,
          value: `planted-${p.site}-${i}`,
          expectRev: true,
        });
      });
      for (const s of ["a", "b"]) {
        const mine = planted.filter((p) => p.site === s);
        await waitUntil(
          `index of ${s} shows the planted versions`,
          async () => {
            const r = await call<ReconcilerEntriesResponse>(bmm.conn[s]!.nc, s, "reconciler", "entries", {
              bucket: BUCKET,
              keys: mine.map((p) => p.key),
            });
            const got = new Map(r.value.entries.map((e) => [e.key, e]));
            return mine.every((p) => got.get(p.key)?.ts === p.v.ts);
          },
          30_000,
          100,
        );
      }
      await quiet(bm, 60_000);

      log(`reconcile: ${DIFFS} entries differ among ${kfmt(K)}; calling syncd.a.reconciler.run`);
      const tr0 = nowMs();
      const r = await withProgress(
        "reconcile/run",
        async () => {
          const st = await call<ReconcilerStatusResponse>(bmm.conn.b!.nc, "a", "reconciler", "status");
          return `progress ${JSON.stringify(st.value.progress ?? {})}`;
        },
        () => call<ReconcilerRunResponse>(bmm.conn.a!.nc, "a", "reconciler", "run", {}, 300_000),
      );
      const runWall = nowMs() - tr0;
      const run = r.value.runs.find((x) => x.peer === "b") ?? r.value.runs[0];
      if (!run) throw new Error(`reconciler.run returned no run: ${JSON.stringify(r.value)}`);
      log(
        `reconcile: moved ${run.entries_moved} entries, ${kfmt(run.bytes)} bytes, ${run.keys_compared} keys compared, ${run.ranges_descended} ranges, ${run.ms} ms${run.error ? `, error ${run.error}` : ""}`,
      );
      await quiet(bm, 60_000);
      // repaired? every planted key holds the planted version at both sites (bounded wait)
      /** planted keys whose version (at either site) is not the planted one, with what is there */
      let mismatches: string[] = [];
      const repairedNow = async (): Promise<boolean> => {
        const bad: string[] = [];
        for (const p of planted) {
          for (const s of ["a", "b"]) {
            const m = await bmm.conn[s]!.meta!.get(p.key);
            const v = m?.operation === "PUT" ? (m.json() as { ts: number; node_id: string }) : null;
            if (v?.ts !== p.v.ts || v.node_id !== p.v.node_id)
              bad.push(
                `${p.key}@${s}: want ${p.v.ts}/${p.v.node_id} (planted at ${p.site}), _meta ${m ? m.string() : "none"}`,
              );
          }
        }
        mismatches = bad;
        return bad.length === 0;
      };
      const repaired = await waitUntil("planted versions at both sites", repairedNow, 15_000, 200).then(
        () => true,
        () => false,
      );
      if (!repaired)
        log(
          `reconcile: ${mismatches.length} planted versions missing after the run, e.g. ${mismatches.slice(0, 3).join("; ")}`,
        );
      // then the next run should compare the roots only: wait until both indexes agree
      const root = async (s: string) =>
        JSON.stringify(
          (
            await call<ReconcilerDigestResponse>(bmm.conn[s]!.nc, s, "reconciler", "digest", {
              bucket: BUCKET,
              prefixes: [],
            })
          ).value.root,
        );
      const rootsEqual = await waitUntil(
        "equal root digests",
        async () => (await root("a")) === (await root("b")),
        15_000,
        200,
      ).then(
        () => true,
        (err: unknown) => {
          log(`reconcile: ${(err as Error).message}`);
          return false;
        },
      );
      // when the roots differ: do the two sites' full version listings differ too?
      let listingDiff: number | null = null;
      if (!rootsEqual) {
        const la = new Map<string, string>();
        const lb = new Map<string, string>();
        await fullListing(bm.conn.a!.nc, "a", false, la);
        await fullListing(bm.conn.b!.nc, "b", false, lb);
        listingDiff = 0;
        for (const k of new Set([...la.keys(), ...lb.keys()])) if (la.get(k) !== lb.get(k)) listingDiff++;
        log(
          `reconcile: root digests differ; the full version listings differ in ${listingDiff} keys (a ${la.size}, b ${lb.size})`,
        );
      }
      let rerun: Run | null = null;
      try {
        const rr = await call<ReconcilerRunResponse>(bm.conn.a!.nc, "a", "reconciler", "run", {}, 300_000);
        rerun = rr.value.runs.find((x) => x.peer === "b") ?? null;
      } catch (err) {
        log(`reconcile: second run failed: ${(err as Error).message}`);
      }
      const rssAfter = rssOf(processes(bm));

      // what a full listing costs
      let computed = 0;
      for (let j = 0; j < K; j++) {
        const v = version(j, base);
        computed += `rk.${j}`.length + JSON.stringify({ ...v, vh: "0123456789abcdef" }).length + VALUE_BYTES;
      }
      const lv = await fullListing(bm.conn.a!.nc, "a", false);
      let withValues: { bytes: number; entries: number } | null = null;
      let withValuesMs: number | null = null;
      try {
        const t = nowMs();
        withValues = await withProgress(
          "reconcile/full-listing",
          () => "listing every entry with values",
          () => fullListing(bm!.conn.a!.nc, "a", true),
        );
        withValuesMs = round(nowMs() - t);
      } catch (err) {
        log(`reconcile: full listing with values failed: ${(err as Error).message}`);
      }
      const listingBytes = withValues?.bytes ?? computed;
      const res: ReconcileResult = {
        keys_per_site: K,
        differing: DIFFS,
        load: {
          method:
            "services stopped; core publishes of bucket entries with Syncd-Ts/Syncd-Node headers and _meta entries, both sites in parallel, checked against stream state",
          ms: round(loadMs),
          puts_per_s: Math.round((4 * K) / (loadMs / 1000)),
        },
        services_ready_ms: round(readyMs),
        run,
        run_wall_ms: round(runWall),
        rerun,
        roots_equal_after_repair: rootsEqual,
        listing_diff_after_repair: listingDiff,
        full_listing_bytes_computed: computed,
        full_listing_bytes_versions: lv.bytes,
        full_listing_bytes_with_values: withValues?.bytes ?? null,
        full_listing_with_values_ms: withValuesMs,
        moved_per_differing: round(run.entries_moved / DIFFS, 2),
        bytes_vs_listing_pct: round((run.bytes / listingBytes) * 100, 2),
        repaired,
        repair_mismatches: mismatches.slice(0, 5),
        repair_mismatch_count: mismatches.length,
        rss_at_k: rssAtK,
        rss_after_run: rssAfter,
      };
      log(
        `reconcile: ${res.moved_per_differing}× the differing entries, ${res.bytes_vs_listing_pct}% of a full listing (${kfmt(listingBytes)} B); repaired: ${repaired}`,
      );
      return res;
    } finally {
      await stopQuietly(bm);
    }
  },
};
