/** Small helpers of the bench: load generators, statistics, waiting and progress lines. */

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Monotonic time in ms (the same clock V8 CPU profiles use, in µs there). */
export function nowMs(): number {
  return performance.now();
}

/** CLOCK_MONOTONIC in µs: comparable with `startTime` and the samples of a `.cpuprofile` of any process. */
export function monoUs(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

/**
 * Run fn(i) for i in [0,total) keeping at most `window` calls in flight; resolves when all have
 * succeeded, rejects on the first error.
 */
export function pipelined(total: number, window: number, fn: (i: number) => Promise<unknown>): Promise<void> {
  return new Promise((resolve, reject) => {
    let next = 0;
    let done = 0;
    let failed = false;
    if (total === 0) {
      resolve();
      return;
    }
    const launch = (): void => {
      while (!failed && next < total && next - done < window) {
        const i = next++;
        fn(i).then(
          () => {
            done++;
            if (done === total) resolve();
            else launch();
          },
          (err: unknown) => {
            failed = true;
            reject(err);
          },
        );
      }
    };
    launch();
  });
}

/**
 * Offer fn(i) at a fixed rate: call i is due at t0 + i/rate. Calls are issued when due (not waiting
 * for earlier ones) unless `maxInFlight` are outstanding. Returns when all have settled, with the
 * achieved offered rate.
 */
export async function paced(
  total: number,
  ratePerS: number,
  fn: (i: number) => Promise<unknown>,
  maxInFlight = 4096,
): Promise<{ offered_ops_s: number; ms: number }> {
  const t0 = nowMs();
  let next = 0;
  let inFlight = 0;
  let failed: unknown;
  const all: Promise<unknown>[] = [];
  while (next < total) {
    if (failed !== undefined) throw failed;
    const due = Math.min(total, Math.floor(((nowMs() - t0) * ratePerS) / 1000) + 1);
    while (next < due && inFlight < maxInFlight) {
      const i = next++;
      inFlight++;
      all.push(
        fn(i).then(
          () => {
            inFlight--;
          },
          (err: unknown) => {
            inFlight--;
            failed = err;
          },
        ),
      );
    }
    if (next < total) await sleep(1);
  }
  const tIssued = nowMs();
  await Promise.all(all);
  if (failed !== undefined) throw failed;
  return { offered_ops_s: Math.round(total / ((tIssued - t0) / 1000)), ms: nowMs() - t0 };
}

export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx] as number;
}

export type Latency = { n: number; p50_ms: number; p90_ms: number; p99_ms: number; max_ms: number };

/** Percentiles of a sample in ms. */
export function latencySummary(ms: ArrayLike<number>): Latency {
  const s = Float64Array.from(ms).sort();
  return {
    n: s.length,
    p50_ms: round(percentile(s, 50), 2),
    p90_ms: round(percentile(s, 90), 2),
    p99_ms: round(percentile(s, 99), 2),
    max_ms: round(s.length ? (s[s.length - 1] as number) : Number.NaN, 2),
  };
}

export function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return Number.NaN;
  return n % 2 ? (s[(n - 1) / 2] as number) : ((s[n / 2 - 1] as number) + (s[n / 2] as number)) / 2;
}

/** Poll `fn` until it returns true; throws after `timeoutMs` with `what`. */
export async function waitUntil(
  what: string,
  fn: () => Promise<boolean> | boolean,
  timeoutMs: number,
  intervalMs = 50,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      if (await fn()) return;
      lastErr = undefined;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline)
      throw new Error(
        `timeout (${timeoutMs} ms) waiting for ${what}${lastErr ? `: ${(lastErr as Error).message ?? String(lastErr)}` : ""}`,
      );
    await sleep(intervalMs);
  }
}

const t0Log = Date.now();

/** A timestamped line on stderr. */
export function log(msg: string): void {
  const s = ((Date.now() - t0Log) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[bench ${s}s] ${msg}\n`);
}

/**
 * Print `status()` every `everyMs` while `fn` runs (the progress line of a case), then once more.
 * A failing status() prints its error instead.
 */
export async function withProgress<T>(
  label: string,
  status: () => Promise<string> | string,
  fn: () => Promise<T>,
  everyMs = 2000,
): Promise<T> {
  let busy = false;
  const tick = async (): Promise<void> => {
    if (busy) return;
    busy = true;
    try {
      log(`${label}: ${await status()}`);
    } catch (err) {
      log(`${label}: (status failed: ${(err as Error).message})`);
    } finally {
      busy = false;
    }
  };
  const timer = setInterval(() => void tick(), everyMs);
  try {
    return await fn();
  } finally {
    clearInterval(timer);
  }
}

/** `12345.6` → `"12.3k"`. */
export function kfmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  return Math.abs(n) >= 1000 ? `${(n / 1000).toFixed(1)}k` : String(Math.round(n));
}

/** A value of 100 bytes whose first bytes carry `tag`. */
export function value100(tag: string): Uint8Array {
  const v = new Uint8Array(100).fill(0x78);
  const t = new TextEncoder().encode(tag);
  v.set(t.subarray(0, 100));
  return v;
}

/** A JSON document over HTTP (the servers' monitoring endpoints); throws on a non-2xx status. */
export async function getJson<T>(url: string): Promise<T> {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return (await r.json()) as T;
}

/** The fields of a server's /varz the cases read. */
export type Varz = {
  in_msgs: number;
  out_msgs: number;
  in_bytes: number;
  out_bytes: number;
  subscriptions: number;
};

/** A markdown table (cells' `|` escaped). */
export function table(head: string[], rows: (string | number)[][]): string {
  const line = (r: (string | number)[]) => `| ${r.map((c) => String(c).replace(/\|/g, "\\|")).join(" | ")} |`;
  return [line(head), line(head.map(() => "---")), ...rows.map(line)].join("\n");
}
