/**
 * Case 2: convergence latency at a fixed offered load. Puts at a, paced; each put's ack time at a is
 * recorded, and the time the value is readable at b (a watch on b's bucket, matched by key). Next to
 * the same for NATS-native sourcing (an ordered consumer on b's stream that sources a's KV_config).
 */
import { DeliverPolicy } from "@nats-io/jetstream";
import { type KV, KvWatchInclude } from "@nats-io/kv";
import { kvKeyOf } from "../../services/mod.ts";
import {
  BUCKET,
  type BenchMesh,
  NATIVE_SRC,
  addNativeSource,
  backlog,
  processes,
  quiet,
  startBenchMesh,
  startNativeMesh,
  stopQuietly,
  streamState,
  warmUp,
} from "../lib/mesh.ts";
import { cpuDelta, cpuSnapshot } from "../lib/procstat.ts";
import {
  type Latency,
  kfmt,
  latencySummary,
  log,
  nowMs,
  paced,
  round,
  sleep,
  value100,
  waitUntil,
  withProgress,
} from "../lib/util.ts";
import type { BenchContext, CaseDef } from "./types.ts";

export type LatencyRun = {
  rate: number;
  n: number;
  offered_ops_s: number;
  received: number;
  /** put ack at a → readable at b */
  lag: Latency;
  /** put call at a → readable at b */
  lag_from_call: Latency;
  /** put call → ack at a */
  put_ack: Latency;
  /** last put ack → last value readable at b */
  drain_ms: number;
  /** this mesh's processes and other work on the host during the run, % of one core */
  mesh_cpu_pct: number;
  others_cpu_pct: number;
};

type Sink = {
  /** register the receive time of key index i */
  start: (prefix: string, n: number, onKey: (i: number) => void) => Promise<() => Promise<void>>;
};

async function pacedRun(
  label: string,
  rate: number,
  seconds: number,
  put: (key: string, i: number) => Promise<unknown>,
  sink: Sink,
  status: () => Promise<string>,
  pids: number[],
): Promise<LatencyRun> {
  const n = Math.round(rate * seconds);
  const prefix = `lat.r${rate}.${Date.now()}.`;
  const call = new Float64Array(n);
  const ack = new Float64Array(n);
  const recv = new Float64Array(n);
  let got = 0;
  let tLast = 0;
  const stop = await sink.start(prefix, n, (i) => {
    if (i >= 0 && i < n && recv[i] === 0) {
      recv[i] = nowMs();
      got++;
      if (got === n) tLast = recv[i] as number;
    }
  });
  let offered = 0;
  let tAcked = 0;
  const snap0 = cpuSnapshot(pids);
  try {
    await withProgress(
      label,
      async () => `received ${got}/${n} at b; ${await status()}`,
      async () => {
        const r = await paced(n, rate, async (i) => {
          call[i] = nowMs();
          await put(`${prefix}${i}`, i);
          ack[i] = nowMs();
        });
        offered = r.offered_ops_s;
        tAcked = nowMs();
        // bounded: the backlog drains at >= ~200 ops/s or we give up
        await waitUntil(`${n} values readable at b`, () => got === n, 30_000 + (n / 200) * 1000, 10);
      },
    );
  } finally {
    await stop();
  }
  const d = cpuDelta(snap0, cpuSnapshot(pids));
  const meshMs = [...d.byPid.values()].reduce((a, x) => a + (Number.isFinite(x) ? x : 0), 0);
  const lag: number[] = [];
  const lagCall: number[] = [];
  const putAck: number[] = [];
  for (let i = 0; i < n; i++) {
    if (recv[i]) {
      lag.push((recv[i] as number) - (ack[i] as number));
      lagCall.push((recv[i] as number) - (call[i] as number));
    }
    putAck.push((ack[i] as number) - (call[i] as number));
  }
  const res: LatencyRun = {
    rate,
    n,
    offered_ops_s: offered,
    received: got,
    lag: latencySummary(lag),
    lag_from_call: latencySummary(lagCall),
    put_ack: latencySummary(putAck),
    drain_ms: round(tLast - tAcked),
    mesh_cpu_pct: round((meshMs / d.wall_ms) * 100),
    others_cpu_pct: round(((d.machine_ms - meshMs - d.self_ms) / d.wall_ms) * 100),
  };
  log(
    `${label}: offered ${kfmt(offered)}/s, ack→b p50 ${res.lag.p50_ms} ms, p99 ${res.lag.p99_ms} ms, max ${res.lag.max_ms} ms`,
  );
  return res;
}

/** Seconds of unrecorded load at the rate before each measured run. */
const WARMUP_S = 1;

/** What a paced run writes at a and where it sees the values arrive at b. */
type Route = { kv: KV; sink: Sink; status: () => Promise<string>; pids: number[] };

/** Per rate: a warm-up run (not recorded), `settle`, the measured run, `settle`. */
async function sweep(
  name: string,
  rates: number[],
  seconds: (r: number) => number,
  p: Route,
  settle: () => Promise<void>,
): Promise<LatencyRun[]> {
  const out: LatencyRun[] = [];
  for (const rate of rates) {
    const v = value100(`r${rate}`);
    const put = (k: string) => p.kv.put(k, v);
    await pacedRun(`latency/${name}@${rate} warm-up`, rate, WARMUP_S, put, p.sink, p.status, p.pids);
    await settle();
    out.push(await pacedRun(`latency/${name}@${rate}`, rate, seconds(rate), put, p.sink, p.status, p.pids));
    await settle();
  }
  return out;
}

function keyIndex(key: string, prefix: string): number {
  return key.startsWith(prefix) ? Number(key.slice(prefix.length)) : -1;
}

async function syncdLatency(rates: number[], seconds: (r: number) => number): Promise<LatencyRun[]> {
  let bm: BenchMesh | undefined;
  try {
    log("latency/syncd: starting hub + sites a, b with services");
    bm = await startBenchMesh();
    const a = bm.conn.a!;
    const b = bm.conn.b!;
    await warmUp(bm, "a", `warm.${Date.now()}`);
    const sink: Sink = {
      async start(prefix, _n, onKey) {
        const w = await b.kv.watch({ key: `${prefix}>`, include: KvWatchInclude.UpdatesOnly });
        const loop = (async () => {
          for await (const e of w) if (e.operation === "PUT") onKey(keyIndex(e.key, prefix));
        })();
        return async () => {
          w.stop();
          await loop.catch(() => {});
        };
      },
    };
    const bmm = bm;
    const status = async () => {
      const bl = await backlog(bmm.conn.b!.jsm, "b");
      return `b merger backlog ${bl.merger}, source lag ${bl.source_lag}`;
    };
    return await sweep(
      "syncd",
      rates,
      seconds,
      { kv: a.kv, sink, status, pids: processes(bm).map((p) => p.pid) },
      async () => {
        await quiet(bmm, 120_000);
        await sleep(500);
      },
    );
  } finally {
    await stopQuietly(bm);
  }
}

async function nativeLatency(rates: number[], seconds: (r: number) => number): Promise<LatencyRun[]> {
  let bm: BenchMesh | undefined;
  try {
    log("latency/native: starting hub + sites a, b without services");
    bm = await startNativeMesh();
    const a = bm.conn.a!;
    const b = bm.conn.b!;
    await addNativeSource(b);
    // warm-up through the source, like the syncd run
    for (let i = 0; i < 300; i++) void a.kv.put(`warm.${i}`, value100("w"));
    await waitUntil(
      "native warm-up",
      async () => (await streamState(b.jsm, NATIVE_SRC)).messages >= 300,
      20_000,
      20,
    );
    const sink: Sink = {
      async start(prefix, _n, onKey) {
        const oc = await b.js.consumers.get(NATIVE_SRC, { deliver_policy: DeliverPolicy.New });
        const it = await oc.consume();
        const loop = (async () => {
          for await (const m of it) onKey(keyIndex(kvKeyOf(BUCKET, m.subject), prefix));
        })();
        return async () => {
          await it.close().catch(() => {});
          await loop.catch(() => {});
        };
      },
    };
    const status = async () => `NATIVE_SRC holds ${(await streamState(b.jsm, NATIVE_SRC)).messages}`;
    const pids = processes(bm).map((p) => p.pid);
    return await sweep("native", rates, seconds, { kv: a.kv, sink, status, pids }, () => sleep(500));
  } finally {
    await stopQuietly(bm);
  }
}

export type LatencyResult = { syncd: LatencyRun[]; native: LatencyRun[] };

export const latencyCase: CaseDef = {
  name: "latency",
  title: "2. Convergence latency at a fixed offered load",
  async run(ctx: BenchContext): Promise<LatencyResult> {
    // 200/s (full mode only): the floor of the lag, with little queueing
    const rates = ctx.quick ? [1000] : [200, 1000, 5000];
    const seconds = (r: number) => (ctx.quick ? 3 : r >= 5000 ? 3 : r <= 200 ? 4 : 5);
    const native = await nativeLatency(rates, seconds);
    const syncd = await syncdLatency(rates, seconds);
    return { syncd, native };
  },
};
