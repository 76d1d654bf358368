import { Kvm } from "@nats-io/kv";
import { kvStream } from "../../services/mod.ts";
import type { MeshOptions } from "../../test/harness/mesh.ts";
import {
  BUCKET,
  type BenchMesh,
  NATIVE_SRC,
  addNativeSource,
  backlog,
  processes,
  startBenchMesh,
  startNativeMesh,
  stopQuietly,
  streamState,
  warmUp,
} from "../lib/mesh.ts";
import { cpuDelta, cpuOf, cpuSnapshot, rssOf } from "../lib/procstat.ts";
import {
  kfmt,
  log,
  median,
  monoUs,
  nowMs,
  pipelined,
  round,
  value100,
  waitUntil,
  withProgress,
} from "../lib/util.ts";
import type { BenchContext, CaseDef, ProcCpu, ProcRss } from "./types.ts";

export const WINDOW = 256;

export type SyncdRun = {
  label: string;
  scale: string;
  n: number;
  window: number;
  /** n / (first put → last put acked at a) */
  put_ops_s: number;
  /** n / (first put → all n applied at b) */
  repl_ops_s: number;
  /** last put acked at a → all applied at b */
  catchup_ms: number;
  cpu: ProcCpu[];
  /** the bench process (writer + pollers) */
  bench_cpu_pct: number;
  /** all cores busy (whole machine) over the interval, % of one core */
  machine_cpu_pct: number;
  /** the mesh's processes (servers + services), % of one core */
  mesh_cpu_pct: number;
  /** everything else on the host: machine − mesh − bench, % of one core */
  others_cpu_pct: number;
  rss_before: ProcRss[];
  rss_after: ProcRss[];
  /** CLOCK_MONOTONIC µs of the measured interval, to cut CPU profiles */
  window_us: [number, number];
};

/** Pipelined puts of n new keys at a; waits until b's bucket holds them all. On a running mesh. */
export async function measureSyncd(
  bm: BenchMesh,
  label: string,
  n: number,
  scale: string,
): Promise<SyncdRun> {
  const a = bm.conn.a!;
  const b = bm.conn.b!;
  const procs = processes(bm);
  const base = (await streamState(b.jsm, kvStream(BUCKET))).messages;
  const rssBefore = rssOf(procs);
  let done = 0;
  let tPutDone = 0;
  let tAll = 0;
  const poller = (async () => {
    // bounded by the overall wait below
    const deadline = Date.now() + 600_000;
    while (Date.now() < deadline) {
      const st = await streamState(b.jsm, kvStream(BUCKET));
      if (st.messages - base >= n) {
        tAll = nowMs();
        return;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  const snap0 = cpuSnapshot(procs.map((p) => p.pid));
  const us0 = monoUs();
  const t0 = nowMs();
  await withProgress(
    `${label}`,
    async () => {
      const st = await streamState(b.jsm, kvStream(BUCKET));
      const bl = await backlog(b.jsm, "b");
      const el = (nowMs() - t0) / 1000;
      return `put ${done}/${n} at a, applied ${st.messages - base}/${n} at b (${kfmt((st.messages - base) / el)}/s), b merger backlog ${bl.merger}`;
    },
    async () => {
      const tag = `${label.replace(/\W+/g, "_")}.${Date.now()}`;
      await pipelined(n, WINDOW, (i) =>
        a.kv.put(`tp.${tag}.${i}`, value100(String(i))).then(() => void done++),
      );
      tPutDone = nowMs();
      const limit = Math.max(60_000, n * 5);
      await waitUntil(`${n} keys applied at b`, () => tAll > 0, limit, 10);
    },
  );
  const snap1 = cpuSnapshot(procs.map((p) => p.pid));
  const us1 = monoUs();
  await poller;
  const d = cpuDelta(snap0, snap1);
  const cpu: ProcCpu[] = cpuOf(procs, d, n);
  const meshMs = cpu.reduce((acc, c) => acc + (Number.isFinite(c.cpu_ms) ? c.cpu_ms : 0), 0);
  const r: SyncdRun = {
    label,
    scale,
    n,
    window: WINDOW,
    put_ops_s: Math.round(n / ((tPutDone - t0) / 1000)),
    repl_ops_s: Math.round(n / ((tAll - t0) / 1000)),
    catchup_ms: round(tAll - tPutDone),
    cpu,
    bench_cpu_pct: round((d.self_ms / d.wall_ms) * 100),
    machine_cpu_pct: round((d.machine_ms / d.wall_ms) * 100),
    mesh_cpu_pct: round((meshMs / d.wall_ms) * 100),
    others_cpu_pct: round(((d.machine_ms - meshMs - d.self_ms) / d.wall_ms) * 100),
    rss_before: rssBefore,
    rss_after: rssOf(procs),
    window_us: [us0, us1],
  };
  log(
    `${label}: ${kfmt(r.repl_ops_s)} ops/s replicated (put ${kfmt(r.put_ops_s)}/s at a, b complete ${r.catchup_ms} ms after the last put ack)`,
  );
  return r;
}

/** A fresh mesh with services, warmed up, then one measured run. */
export async function syncdThroughput(
  label: string,
  n: number,
  scale?: MeshOptions["scale"],
  hooks: { beforeStop?: (bm: BenchMesh, run: SyncdRun) => Promise<void> } = {},
): Promise<SyncdRun> {
  let bm: BenchMesh | undefined;
  try {
    log(`${label}: starting hub + sites a, b with services (scale ${JSON.stringify(scale ?? "1 each")})`);
    bm = await startBenchMesh({ ...(scale ? { scale } : {}) });
    await warmUp(bm, "a", `warm.${Date.now()}`);
    const run = await measureSyncd(bm, label, n, scale ? JSON.stringify(scale) : "1 each");
    await hooks.beforeStop?.(bm, run);
    return run;
  } finally {
    await stopQuietly(bm);
  }
}

export type NativeRun = {
  n: number;
  window: number;
  /** n / (first put → last put acked) into a bucket nobody sources */
  raw_put_ops_s: number;
  /** put rate at a while b sources the bucket */
  put_ops_s: number;
  /** n / (first put → b's sourcing stream holds n) */
  repl_ops_s: number;
  catchup_ms: number;
};

/** Hub + sites a, b without services: raw put rate at a, then b sourcing a's KV_config. */
export async function nativeThroughput(label: string, n: number): Promise<NativeRun> {
  let bm: BenchMesh | undefined;
  try {
    log(`${label}: starting hub + sites a, b without services`);
    bm = await startNativeMesh();
    const a = bm.conn.a!;
    const b = bm.conn.b!;
    // warm up the writer and the server (same as the syncd run's warm-up)
    const warm = await new Kvm(a.nc).create("warmup", { history: 1 });
    await pipelined(300, 64, (i) => warm.put(`w.${i}`, value100(String(i))));

    // raw: a bucket nobody replicates
    const raw = await new Kvm(a.nc).create("raw", { history: 1 });
    const tr0 = nowMs();
    await pipelined(n, WINDOW, (i) => raw.put(`raw.${i}`, value100(String(i))));
    const rawOps = Math.round(n / ((nowMs() - tr0) / 1000));

    // native: a stream at b sourcing a's KV_config across domains
    await addNativeSource(b);
    // the source is live once an entry crosses
    await a.kv.put("native.probe", value100("probe"));
    await waitUntil(
      "native source live",
      async () => (await streamState(b.jsm, NATIVE_SRC)).messages >= 1,
      20_000,
      20,
    );
    const base = (await streamState(b.jsm, NATIVE_SRC)).messages;
    let tAll = 0;
    let tPutDone = 0;
    const t0 = nowMs();
    const poller = (async () => {
      const deadline = Date.now() + 300_000;
      while (Date.now() < deadline) {
        if ((await streamState(b.jsm, NATIVE_SRC)).messages - base >= n) {
          tAll = nowMs();
          return;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    await pipelined(n, WINDOW, (i) => a.kv.put(`nat.${i}`, value100(String(i))));
    tPutDone = nowMs();
    await poller;
    if (!tAll) throw new Error("native: b never held all messages");
    const r: NativeRun = {
      n,
      window: WINDOW,
      raw_put_ops_s: rawOps,
      put_ops_s: Math.round(n / ((tPutDone - t0) / 1000)),
      repl_ops_s: Math.round(n / ((tAll - t0) / 1000)),
      catchup_ms: round(tAll - tPutDone),
    };
    log(`${label}: native ${kfmt(r.repl_ops_s)} ops/s replicated, raw put ${kfmt(r.raw_put_ops_s)} ops/s`);
    return r;
  } finally {
    await stopQuietly(bm);
  }
}

export type ThroughputResult = {
  /** the syncd run with the least other work on the host: the one the CPU tables show */
  syncd: SyncdRun;
  syncd_runs: SyncdRun[];
  /** median over the syncd runs */
  syncd_repl_ops_s: number;
  native: NativeRun[];
  native_repl_ops_s: number;
  raw_put_ops_s: number;
  ratio_vs_native: number;
  ratio_vs_raw: number;
};

export const throughputCase: CaseDef = {
  name: "throughput",
  title: "1. Replicated throughput",
  async run(ctx: BenchContext): Promise<ThroughputResult> {
    const n = ctx.quick ? 3_000 : 20_000;
    // alternating native / syncd runs (native first and last), so a burst of other work on the
    // shared host does not decide the ratio alone; medians make the ratios
    const reps = ctx.quick ? 1 : 2;
    const native: NativeRun[] = [];
    const syncdRuns: SyncdRun[] = [];
    for (let r = 1; r <= reps; r++) {
      native.push(await nativeThroughput(`throughput/native#${r}`, n));
      syncdRuns.push(await syncdThroughput(`throughput/syncd#${r}`, n));
    }
    native.push(await nativeThroughput(`throughput/native#${reps + 1}`, n));
    const nativeOps = median(native.map((x) => x.repl_ops_s));
    const rawOps = median(native.map((x) => x.raw_put_ops_s));
    const syncdOps = median(syncdRuns.map((x) => x.repl_ops_s));
    const cleanest = [...syncdRuns].sort((x, y) => x.others_cpu_pct - y.others_cpu_pct)[0]!;
    const res: ThroughputResult = {
      syncd: cleanest,
      syncd_runs: syncdRuns,
      syncd_repl_ops_s: syncdOps,
      native,
      native_repl_ops_s: nativeOps,
      raw_put_ops_s: rawOps,
      ratio_vs_native: round(syncdOps / nativeOps, 3),
      ratio_vs_raw: round(syncdOps / rawOps, 3),
    };
    log(
      `throughput: syncd ${kfmt(syncdOps)}/s = ${round(res.ratio_vs_native * 100)}% of native (${kfmt(nativeOps)}/s), ${round(res.ratio_vs_raw * 100)}% of raw put (${kfmt(rawOps)}/s) (medians)`,
    );
    return res;
  },
};
