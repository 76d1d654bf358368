/** What every case gets and what the bench collects. */

export type BenchContext = {
  quick: boolean;
  /** results of the cases run so far in this invocation (by case name), for same-run comparisons */
  results: Record<string, unknown>;
  /** where CPU profiles go */
  workDir: string;
};

export type CaseDef = {
  name: string;
  title: string;
  run: (ctx: BenchContext) => Promise<unknown>;
};

/** CPU spent by one process over a measured interval. */
export type ProcCpu = {
  pid: number;
  site: string;
  name: string;
  kind: string;
  cpu_ms: number;
  /** CPU µs per op of the interval */
  us_per_op: number;
  /** % of one core over the interval */
  pct_core: number;
};

/** RSS of one process. */
export type ProcRss = { site: string; name: string; kind: string; rss_mb: number };
