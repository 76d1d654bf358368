import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { ConflictResult } from "./cases/conflict.ts";
import type { FootprintResult } from "./cases/footprint.ts";
/**
 * RESULTS.md from a bench report: tables only — machine and versions, the targets, the numbers derived
 * from the measurements, one section per case, the CPU profile. How each case measures and how to
 * read it is prose in one place, bench/NOTES.md, put under the tables. A block between
 * `<!-- notes:begin -->` and `<!-- notes:end -->` in the existing file is kept (hand-written reading).
 */
import { type HubResult, renderHub } from "./cases/hub.ts";
import type { LatencyResult, LatencyRun } from "./cases/latency.ts";
import type { ProfileResult, ServiceProfile } from "./cases/profile.ts";
import type { ReconcileResult } from "./cases/reconcile.ts";
import type { ScaleResult } from "./cases/scaleout.ts";
import { type SitesResult, renderSites } from "./cases/sites.ts";
import type { SyncdRun, ThroughputResult } from "./cases/throughput.ts";
import type { ProcCpu, ProcRss } from "./cases/types.ts";
import type { MachineInfo } from "./lib/machine.ts";
import { table } from "./lib/util.ts";

export type BenchReport = {
  started: string;
  finished: string;
  quick: boolean;
  cases: string[];
  machine: MachineInfo & { loadavg_end: number[] };
  durations_s: Record<string, number>;
  /** per case: the form the services ran in ("compiled", "tsx", or a change during the case) */
  services_mode: Record<string, string>;
  results: Record<string, unknown>;
  errors: Record<string, string>;
};

const SERVICE_KINDS = ["clock", "watcher", "merger", "reconciler"];
const RSS_LIMIT_MB = 100;

const fmt = (n: number | null | undefined, d = 0): string =>
  n === null || n === undefined || Number.isNaN(n)
    ? "–"
    : n.toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: d });
const pct = (x: number, d = 0) => `${fmt(x * 100, d)} %`;
/** Other work on the host, % of one core: the accounting (10 ms ticks, two sources) can dip below 0. */
const others = (x: number) => `${fmt(Math.max(0, x))} %`;
const verdict = (ok: boolean | null) => (ok === null ? "not measured" : ok ? "**met**" : "**not met**");

function keptNotes(file: string): string {
  const fallback = [
    "<!-- notes:begin -->",
    "_No hand-written notes yet. Text between the notes markers survives a re-run._",
    "<!-- notes:end -->",
  ].join("\n");
  if (!existsSync(file)) return fallback;
  const text = readFileSync(file, "utf8");
  const m = /<!-- notes:begin -->[\s\S]*?<!-- notes:end -->/.exec(text);
  return m ? m[0] : fallback;
}

const isService = (k: string) => SERVICE_KINDS.includes(k);

/** CPU µs per op of the processes doing the work of one replicated op, and the total. */
function cpuLine(cpu: ProcCpu[]): {
  rows: (string | number)[][];
  total: number;
  busiest: ProcCpu | undefined;
} {
  const rows = cpu
    .filter((c) => c.cpu_ms > 0)
    .sort((x, y) => y.us_per_op - x.us_per_op)
    .map((c) => [`${c.site}/${c.name}`, fmt(c.us_per_op), `${fmt(c.pct_core)} %`]);
  const total = cpu.reduce((a, c) => a + (Number.isFinite(c.us_per_op) ? c.us_per_op : 0), 0);
  const busiest = [...cpu].sort((x, y) => y.pct_core - x.pct_core)[0];
  return { rows, total, busiest };
}

function rssByService(list: ProcRss[] | undefined): Map<string, number> {
  return new Map((list ?? []).map((p) => [`${p.site}/${p.name}`, p.rss_mb]));
}

function modesText(modes: Record<string, string> | undefined): string {
  const vals = Object.values(modes ?? {});
  const label = (m: string) =>
    m === "compiled"
      ? "compiled (dist/, via services/run.mjs)"
      : m === "tsx"
        ? "from the TypeScript sources through tsx (services/run.mjs: build stale or SYNCD_TSX=1)"
        : m;
  if (vals.length && vals.every((v) => v === vals[0])) return `${label(vals[0] as string)} in every case`;
  return Object.entries(modes ?? {})
    .map(([k, v]) => `${k}: ${label(v)}`)
    .join("; ");
}

/** The prose of the report: how each case measures and how to read it. */
const NOTES_FILE = fileURLToPath(new URL("./NOTES.md", import.meta.url));

/** Per kind: the largest RSS growth from idle (case 6) to K keys (case 5), MB. */
function svcGrowth(rc: ReconcileResult, fp: FootprintResult | undefined): string {
  if (!fp) return "–";
  const idle = new Map(fp.idle.map((p) => [`${p.site}/${p.name}`, p.rss_mb]));
  const by = new Map<string, number[]>();
  for (const p of rc.rss_at_k) {
    const i = idle.get(`${p.site}/${p.name}`);
    if (!isService(p.kind) || i === undefined) continue;
    by.set(p.kind, [...(by.get(p.kind) ?? []), p.rss_mb - i]);
  }
  return [...by.entries()].map(([k, v]) => `${k} +${fmt(Math.max(...v))} MB`).join(", ");
}

/** The share of nats.js's per-request Error objects in the watcher's and merger's profile. */
function errorShare(pr: ProfileResult | undefined): string {
  const parts = (pr?.profiles ?? [])
    .filter((p) => (p.site === "a" && p.kind === "watcher") || (p.site === "b" && p.kind === "merger"))
    .map((p) => {
      const share = p.summary.top
        .filter((f) => (f.fn === "RequestError" || f.fn === "TimeoutError") && f.where.includes("nats-core"))
        .reduce((a, f) => a + f.pct, 0);
      return `${p.site}/${p.kind} ${fmt(share)} %`;
    });
  return parts.join(", ") || "–";
}

const AGENT_IDLE_LIMIT_MB = 100;
const AGENT_AT_K_LIMIT_MB = 150;
const listRss = (l: ProcRss[]) => l.map((p) => `${p.site}/${p.name} ${fmt(p.rss_mb, 1)}`).join(", ");

/** Target rows: what is measured and whether it meets the target. */
function targets(r: BenchReport): string[][] {
  const tp = r.results.throughput as ThroughputResult | undefined;
  const lat = r.results.latency as LatencyResult | undefined;
  const rc = r.results.reconcile as ReconcileResult | undefined;
  const fp = r.results.footprint as FootprintResult | undefined;
  const rows: string[][] = [];
  const row = (title: string, measured: string | undefined, ok: boolean | null) =>
    rows.push([title, measured ?? "–", verdict(measured === undefined ? null : ok)]);
  row(
    "Replicated throughput ≥ 50 % of native sourcing",
    tp &&
      `${fmt(tp.syncd_repl_ops_s)} vs native ${fmt(tp.native_repl_ops_s)} ops/s = **${pct(tp.ratio_vs_native, 1)}**`,
    !!tp && tp.ratio_vs_native >= 0.5,
  );
  const l1 = lat?.syncd.find((x) => x.rate === 1000);
  row(
    "Convergence p99 ≤ 10 ms at 1 000 ops/s",
    l1 &&
      `p50 ${fmt(l1.lag.p50_ms, 1)} ms, **p99 ${fmt(l1.lag.p99_ms, 1)} ms**, max ${fmt(l1.lag.max_ms, 1)} ms`,
    !!l1 && l1.lag.p99_ms <= 10,
  );
  row(
    "Reconcile moves ≤ 2× the differing entries",
    rc && `${fmt(rc.run.entries_moved)} for ${rc.differing} = **${fmt(rc.moved_per_differing, 2)}×**`,
    !!rc && rc.moved_per_differing <= 2,
  );
  row(
    "Reconcile bytes ≤ 5 % of a full listing",
    rc && `**${fmt(rc.bytes_vs_listing_pct, 2)} %** (${fmt(rc.run.bytes)} B)`,
    !!rc && rc.bytes_vs_listing_pct <= 5,
  );
  const svc = rc?.rss_after_run.filter((p) => isService(p.kind)) ?? [];
  const maxRss = svc.reduce((a, p) => Math.max(a, p.rss_mb), 0);
  row(
    `Each service ≤ ${RSS_LIMIT_MB} MB RSS at ${rc ? fmt(rc.keys_per_site) : "100 000"} keys`,
    rc && `max ${fmt(maxRss, 1)} MB (${svc.map((p) => `${p.site}/${p.kind} ${fmt(p.rss_mb)}`).join(", ")})`,
    maxRss <= RSS_LIMIT_MB,
  );
  const growth = fp?.growth_mb_per_10k_ops.filter((x) => isService(x.kind)) ?? [];
  const worst = [...growth].sort((x, y) => y.mb - x.mb)[0];
  row(
    "Memory not growing with op count (≤ 1 MB per 10 000 ops)",
    worst &&
      `worst ${worst.site}/${worst.kind} ${worst.mb >= 0 ? "+" : ""}${fmt(worst.mb, 1)} MB per 10 000 ops`,
    !!worst && worst.mb <= 1,
  );
  const ag = fp?.agent;
  const agIdle = ag ? Math.max(...ag.idle.map((p) => p.rss_mb)) : 0;
  const agK = ag ? Math.max(...ag.at_k.map((p) => p.rss_mb)) : 0;
  const agKOk = ag && ag.keys_per_site >= 100_000 ? agK <= AGENT_AT_K_LIMIT_MB : null;
  rows.push([
    `A site's agent (one process) ≤ ${AGENT_IDLE_LIMIT_MB} MB RSS idle, ≤ ${AGENT_AT_K_LIMIT_MB} MB at 100 000 keys`,
    ag ? `idle **${fmt(agIdle, 1)} MB**; at ${fmt(ag.keys_per_site)} keys **${fmt(agK, 1)} MB**` : "–",
    !ag
      ? verdict(null)
      : agKOk === null
        ? verdict(agIdle <= AGENT_IDLE_LIMIT_MB ? null : false)
        : verdict(agIdle <= AGENT_IDLE_LIMIT_MB && agKOk),
  ]);
  return rows;
}

/** Numbers derived from several measurements (what NOTES.md reads them for). */
function derived(r: BenchReport): string[][] {
  const tp = r.results.throughput as ThroughputResult | undefined;
  const lat = r.results.latency as LatencyResult | undefined;
  const rc = r.results.reconcile as ReconcileResult | undefined;
  const fp = r.results.footprint as FootprintResult | undefined;
  const pr = r.results.profile as ProfileResult | undefined;
  const rows: string[][] = [];
  if (tp) {
    const c = cpuLine(tp.syncd.cpu);
    rows.push(["CPU per replicated op, all processes of the mesh", `${fmt(c.total)} µs`]);
    rows.push([
      "CPU ceiling (cores ÷ CPU per op)",
      `${fmt(c.total > 0 ? (r.machine.nproc * 1e6) / c.total : Number.NaN)} ops/s`,
    ]);
    rows.push(["syncd / raw put at a", `${pct(tp.ratio_vs_raw, 1)} (raw ${fmt(tp.raw_put_ops_s)} ops/s)`]);
    rows.push(["nats.js Error objects per request, share of CPU", errorShare(pr)]);
  }
  const l1 = lat?.syncd.find((x) => x.rate === 1000);
  if (l1 && tp) rows.push(["1 000 ops/s as a share of case 1's throughput", pct(1000 / tp.syncd_repl_ops_s)]);
  const lLow = lat?.syncd.find((x) => x.rate < 1000);
  if (lLow)
    rows.push([
      `Per-op path at ${fmt(lLow.rate)} ops/s`,
      `p50 ${fmt(lLow.lag.p50_ms, 1)} ms, p99 ${fmt(lLow.lag.p99_ms, 1)} ms`,
    ]);
  if (rc) {
    const listing = rc.full_listing_bytes_with_values ?? rc.full_listing_bytes_computed;
    rows.push([
      "Reconcile bytes per moved entry / one entry in a listing",
      `${fmt(rc.run.bytes / Math.max(1, rc.run.entries_moved))} B / ${fmt(listing / rc.keys_per_site)} B`,
    ]);
    rows.push(["Service RSS growth, idle → K keys", svcGrowth(rc, fp)]);
    rows.push(["Repaired (every planted version at both sites)", rc.repaired ? "yes" : "**no**"]);
  }
  return rows;
}

export function renderResults(r: BenchReport, existingFile: string, jsonRel: string): string {
  const tp = r.results.throughput as ThroughputResult | undefined;
  const lat = r.results.latency as LatencyResult | undefined;
  const cf = r.results.conflict as ConflictResult | undefined;
  const sc = r.results.scaleout as ScaleResult | undefined;
  const rc = r.results.reconcile as ReconcileResult | undefined;
  const fp = r.results.footprint as FootprintResult | undefined;
  const pr = r.results.profile as ProfileResult | undefined;
  const m = r.machine;
  const out: string[] = [];
  const section = (title: string, ...tables: string[]) =>
    out.push(`## ${title}`, "", ...tables.flatMap((t) => [t, ""]));

  out.push("# nats-kv-syncd — benchmark results", "");
  out.push(
    `\`npm run bench${r.quick ? " -- --quick" : ""}\` on ${r.started.slice(0, 16).replace("T", " ")} UTC (${r.quick ? "**quick mode**" : "full mode"}); raw numbers: [\`${jsonRel}\`](${jsonRel}); how it is measured and how to read it: [Notes](#notes).`,
    "",
  );
  section(
    "Machine and versions",
    table(
      ["", ""],
      [
        ["CPU", `${m.nproc} cores (\`nproc\`), ${m.cpu_model}`],
        ["Memory", `${m.mem_gb} GB`],
        ["Kernel", m.kernel],
        [
          "Load average (1/5/15 min)",
          `${m.loadavg_start.join(" / ")} at the start, ${m.loadavg_end.join(" / ")} at the end`,
        ],
        ["Node", m.node],
        ["nats-server", m.nats_server],
        [
          "Packages",
          Object.entries(m.packages)
            .map(([k, v]) => `${k} ${v}`)
            .join(", "),
        ],
        [
          "Code",
          `commit ${m.git.commit}${m.git.dirty_services ? " (services/ had uncommitted changes)" : ""}`,
        ],
        ["Services ran", modesText(r.services_mode)],
        [
          "Durations",
          Object.entries(r.durations_s)
            .map(([k, v]) => `${k} ${v} s`)
            .join(", "),
        ],
      ],
    ),
  );
  const derivedRows = derived(r);
  section(
    "Targets",
    table(["Target", "Measured", "Status"], targets(r)),
    ...(derivedRows.length ? [table(["Derived", ""], derivedRows)] : []),
  );

  if (tp) {
    const runs: (string | number)[][] = [];
    tp.native.forEach((nr, i) => {
      runs.push([
        `native sourcing #${i + 1}`,
        fmt(nr.repl_ops_s),
        fmt(nr.put_ops_s),
        `${fmt(nr.catchup_ms)} ms`,
        fmt(nr.raw_put_ops_s),
        "–",
      ]);
      const sr = tp.syncd_runs[i];
      if (sr)
        runs.push([
          `syncd #${i + 1} (1 instance each)`,
          `**${fmt(sr.repl_ops_s)}**`,
          fmt(sr.put_ops_s),
          `${fmt(sr.catchup_ms)} ms`,
          "–",
          others(sr.others_cpu_pct),
        ]);
    });
    const c = cpuLine(tp.syncd.cpu);
    const s = tp.syncd;
    section(
      "1. Replicated throughput",
      table(
        [
          "run (in order)",
          "ops/s end to end",
          "put rate at a",
          "last put ack → complete at b",
          "raw put at a, ops/s",
          "other work on the host",
        ],
        runs,
      ),
      table(
        ["syncd run with the least other work, % of one core", "mesh", "bench", "other work", "machine"],
        [
          [
            "",
            `${fmt(s.mesh_cpu_pct)} %`,
            `${fmt(s.bench_cpu_pct)} %`,
            others(s.others_cpu_pct),
            `${fmt(s.machine_cpu_pct)} % of ${m.nproc * 100} %`,
          ],
        ],
      ),
      table(
        ["process", "CPU µs per op", "% of one core"],
        [...c.rows, ["**all**", `**${fmt(c.total)}**`, ""]],
      ),
    );
  }

  if (lat) {
    const row = (kind: string, x: LatencyRun) => [
      `${kind} @ ${fmt(x.rate)}/s`,
      `${fmt(x.n)} (${fmt(x.offered_ops_s)}/s offered)`,
      fmt(x.received),
      fmt(x.lag.p50_ms, 2),
      fmt(x.lag.p90_ms, 2),
      `**${fmt(x.lag.p99_ms, 2)}**`,
      fmt(x.lag.max_ms, 2),
      fmt(x.put_ack.p99_ms, 2),
      fmt(x.drain_ms),
      others(x.others_cpu_pct),
    ];
    section(
      "2. Convergence latency at a fixed offered load",
      table(
        [
          "",
          "ops",
          "received at b",
          "p50 ms",
          "p90 ms",
          "p99 ms",
          "max ms",
          "put ack p99 ms",
          "last ack → all at b, ms",
          "other work on the host",
        ],
        [...lat.syncd.map((x) => row("syncd", x)), ...lat.native.map((x) => row("native", x))],
      ),
    );
  }

  if (cf) {
    section(
      "3. Conflict-heavy",
      table(
        [
          "puts per site",
          "keys",
          "in flight per site",
          "puts/s over both sites",
          "writers' end → identical and quiet",
          "quiet but different (polls)",
          "keys differing at the end",
        ],
        [
          [
            fmt(cf.ops_per_site),
            cf.keys,
            cf.window,
            fmt(cf.write_ops_s),
            cf.converge_ms === null ? `**not within ${fmt(cf.limit_s)} s**` : `**${fmt(cf.converge_ms)} ms**`,
            fmt(cf.quiet_but_different),
            fmt(cf.differing_keys_at_end),
          ],
        ],
      ),
      table(
        ["site", "merger counts", "watcher counts"],
        ["a", "b"].map((x) => [
          x,
          JSON.stringify(cf.merger_counts[x] ?? {}),
          JSON.stringify(cf.watcher_counts[x] ?? {}),
        ]),
      ),
    );
  }

  if (sc) {
    const row = (x: SyncdRun, label: string) => [
      label,
      `**${fmt(x.repl_ops_s)}**`,
      fmt(x.put_ops_s),
      x.cpu
        .filter((c) => c.kind === "watcher" && c.site === "a")
        .map((c) => `${fmt(c.pct_core)} %`)
        .join(" + "),
      x.cpu
        .filter((c) => c.kind === "merger" && c.site === "b")
        .map((c) => `${fmt(c.pct_core)} %`)
        .join(" + "),
      `${fmt(x.mesh_cpu_pct)} %`,
      others(x.others_cpu_pct),
    ];
    const runs: (string | number)[][] = [];
    for (let i = 0; i < Math.max(sc.one_runs.length, sc.two_runs.length); i++) {
      const o = sc.one_runs[i];
      const t = sc.two_runs[i];
      if (o) runs.push(row(o, `1 merger, 1 watcher #${i + 1}`));
      if (t) runs.push(row(t, `2 mergers, 2 watchers #${i + 1}`));
    }
    const [c1, c2] = [sc.cpu_us_per_op.one, sc.cpu_us_per_op.two];
    section(
      "4. Scale-out",
      table(
        [
          "instances",
          "ops/s end to end",
          "put rate at a",
          "a watcher(s) % core",
          "b merger(s) % core",
          "mesh % of one core",
          "other work on the host",
        ],
        runs,
      ),
      table(
        ["speed-up (medians)", "ops/s 1 → 2", "a's watchers µs per op", "b's mergers µs per op"],
        [
          [
            `**${fmt(sc.speedup, 2)}×**`,
            `${fmt(sc.one_ops_s)} → ${fmt(sc.two_ops_s)}`,
            `${fmt(c1.watcher)} → ${fmt(c2.watcher)}`,
            `${fmt(c1.merger)} → ${fmt(c2.merger)}`,
          ],
        ],
      ),
    );
  }

  if (rc) {
    const run = (label: string, x: ReconcileResult["run"], ms: string) => [
      label,
      `**${fmt(x.entries_moved)}** (pulled ${fmt(x.pulled)}, pushed ${fmt(x.pushed)}, skipped ${fmt(x.skipped ?? 0)})`,
      `**${fmt(x.bytes)}**`,
      fmt(x.keys_compared),
      fmt(x.ranges_descended),
      ms,
    ];
    section(
      "5. Reconcile cost",
      table(
        [
          "keys per site",
          "loaded by",
          "load s",
          "publishes/s",
          "services caught up, s",
          "differences planted",
        ],
        [
          [
            fmt(rc.keys_per_site),
            rc.load.method,
            fmt(rc.load.ms / 1000, 1),
            fmt(rc.load.puts_per_s),
            fmt(rc.services_ready_ms / 1000, 1),
            rc.differing,
          ],
        ],
      ),
      table(
        ["", "entries moved", "bytes", "keys compared", "ranges descended", "ms (reported / wall)"],
        [
          run(`run with ${rc.differing} differing`, rc.run, `${fmt(rc.run.ms)} / ${fmt(rc.run_wall_ms)}`),
          ...(rc.rerun
            ? [
                run(
                  `second run (${rc.roots_equal_after_repair ? "equal root digests" : "root digests still differed"})`,
                  rc.rerun,
                  fmt(rc.rerun.ms),
                ),
              ]
            : []),
        ],
      ),
      table(
        ["full listing of the bucket", "bytes"],
        [
          [
            "`entries` with values (request + reply payloads, paged)",
            `${fmt(rc.full_listing_bytes_with_values)}${rc.full_listing_with_values_ms ? ` (${fmt(rc.full_listing_with_values_ms)} ms)` : ""}`,
          ],
          ["`entries`, versions only", fmt(rc.full_listing_bytes_versions)],
          ["Σ key + version JSON + value over all entries", fmt(rc.full_listing_bytes_computed)],
        ],
      ),
    );
  }

  if (fp || rc || tp) {
    const idle = rssByService(fp?.idle);
    const r1 = rssByService(fp?.rounds[0]?.rss);
    const rl = rssByService(fp?.rounds[fp.rounds.length - 1]?.rss);
    const atK = rssByService(rc?.rss_at_k);
    const afterRun = rssByService(rc?.rss_after_run);
    const afterTp = rssByService(tp?.syncd.rss_after);
    const names = [...new Set([...idle.keys(), ...atK.keys(), ...afterTp.keys()])].sort();
    const tables = [
      table(
        [
          "RSS, MB",
          "idle",
          fp ? `after ${fmt(fp.rounds[0]?.ops_total)} ops` : "rounds",
          fp ? `after ${fmt(fp.rounds[fp.rounds.length - 1]?.ops_total)} ops` : "",
          tp ? `after case 1 (${fmt(tp.syncd.n)} keys)` : "case 1",
          rc ? `at ${fmt(rc.keys_per_site)} keys` : "at K keys",
          "after reconcile",
        ],
        names.map((n) => [n, ...[idle, r1, rl, afterTp, atK, afterRun].map((x) => fmt(x.get(n), 1))]),
      ),
    ];
    if (fp?.agent)
      tables.push(
        table(
          ["agent (one process per site)", "idle", `at ${fmt(fp.agent.keys_per_site)} keys`, "caught up in"],
          [["RSS, MB", listRss(fp.agent.idle), listRss(fp.agent.at_k), `${fmt(fp.agent.ready_s, 1)} s`]],
        ),
      );
    if (fp) {
      const svc = (fp.rounds[0]?.rss ?? []).filter((p) => isService(p.kind));
      const rssAt = (l: ProcRss[], p: ProcRss) =>
        fmt(l.find((x) => x.site === p.site && x.name === p.name)?.rss_mb, 1);
      tables.push(
        table(
          [
            `RSS (MB) after puts (rounds of ${fmt(fp.ops_per_round)} over ${fmt(fp.keyset)} keys)`,
            ...svc.map((p) => `${p.site}/${p.name}`),
          ],
          [
            ["idle", ...svc.map((p) => rssAt(fp.idle, p))],
            ...fp.rounds.map((rd) => [fmt(rd.ops_total), ...svc.map((p) => rssAt(rd.rss, p))]),
          ],
        ),
      );
      const procs = (fp.rounds[0]?.cpu ?? []).filter((c) => isService(c.kind) || c.kind === "nats-server");
      tables.push(
        table(
          ["round: CPU µs per put", "puts/s", ...procs.map((c) => `${c.site}/${c.name}`)],
          fp.rounds.map((rd, i) => [
            String(i + 1),
            fmt(rd.ops_s),
            ...procs.map((c) => fmt(rd.cpu.find((x) => x.site === c.site && x.name === c.name)?.us_per_op)),
          ]),
        ),
      );
    }
    section("6. Footprint", ...tables);
  }

  if (pr) {
    const order = (p: ServiceProfile) =>
      p.site === "a" && p.kind === "watcher" ? 0 : p.site === "b" && p.kind === "merger" ? 1 : 2;
    const tables = [
      table(
        ["process", "CPU µs per op (/proc)", "busy in the profile", "idle in the profile"],
        pr.profiles.map((p) => [
          `${p.site}/${p.name}`,
          fmt(p.cpu_us_per_op),
          `${fmt(p.summary.busy_ms)} ms (${fmt(p.busy_us_per_op)} µs per op)`,
          `${fmt(p.summary.idle_ms)} ms`,
        ]),
      ),
    ];
    for (const p of pr.profiles.filter((x) => order(x) < 2).sort((x, y) => order(x) - order(y))) {
      const perOp = (pctOf: number) => fmt((pctOf / 100) * p.cpu_us_per_op, 1);
      const who = `${p.site}/${p.name}`;
      tables.push(
        table(
          [`${who}: area (self time)`, "% of busy", "µs per op"],
          p.summary.groups.slice(0, 10).map((g) => [g.group, `${fmt(g.pct, 1)} %`, perOp(g.pct)]),
        ),
        table(
          [`${who}: function (self time)`, "where", "% of busy", "µs per op"],
          p.summary.top
            .slice(0, 15)
            .map((f) => [f.fn, f.where || "(native)", `${fmt(f.pct, 1)} %`, perOp(f.pct)]),
        ),
        table(
          [`${who}: the repo's functions (inclusive)`, "file", "% of busy", "µs per op"],
          p.summary.repo_inclusive
            .slice(0, 10)
            .map((f) => [f.fn, f.where, `${fmt(f.pct, 1)} %`, perOp(f.pct)]),
        ),
      );
    }
    const rest = pr.profiles.filter((p) => order(p) === 2);
    if (rest.length)
      tables.push(
        table(
          ["process", "top 5 functions (self, % of its busy time)"],
          rest.map((p) => [
            `${p.site}/${p.name}`,
            p.summary.top
              .slice(0, 5)
              .map((f) => `${f.fn} (${f.where || "native"}) ${fmt(f.pct, 1)} %`)
              .join("; "),
          ]),
        ),
      );
    if (pr.missing.length)
      tables.push(
        table(
          ["no profile from"],
          pr.missing.map((x) => [x]),
        ),
      );
    section(
      `Where the CPU goes (case 1 under the CPU profiler, ${fmt(pr.run.n)} keys, ${pr.interval_us} µs sampling)`,
      ...tables,
    );
  }

  if (Object.keys(r.errors).length)
    section(
      "Failed cases",
      table(
        ["case", "error"],
        Object.entries(r.errors).map(([k, v]) => [k, `\`${v.split("\n")[0]}\``]),
      ),
    );

  const st = r.results.sites as SitesResult | undefined;
  if (st) out.push(...renderSites(st));
  const hb = r.results.hub as HubResult | undefined;
  if (hb) out.push(...renderHub(hb));

  section(
    "Notes",
    readFileSync(NOTES_FILE, "utf8")
      .replace(/^<!--.*-->\n+/, "")
      .trim(),
  );
  section("Reading", keptNotes(existingFile));
  return out.join("\n");
}
