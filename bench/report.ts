import { existsSync, readFileSync } from "node:fs";
import type { ConflictResult } from "./cases/conflict.ts";
import type { FootprintResult } from "./cases/footprint.ts";
import type { LatencyResult, LatencyRun } from "./cases/latency.ts";
import type { ProfileResult, ServiceProfile } from "./cases/profile.ts";
import type { ReconcileResult } from "./cases/reconcile.ts";
import type { ScaleResult } from "./cases/scaleout.ts";
/**
 * RESULTS.md from a bench report: machine and versions, the targets with where each stands and what
 * limits it (derived from the measurements), one section per case, the CPU profile summary. A block
 * between `<!-- notes:begin -->` and `<!-- notes:end -->` in the existing file is kept (hand-written
 * reading of the numbers).
 */
import { type SitesResult, renderSites } from "./cases/sites.ts";
import type { SyncdRun, ThroughputResult } from "./cases/throughput.ts";
import type { ProcCpu, ProcRss } from "./cases/types.ts";
import type { MachineInfo } from "./lib/machine.ts";

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

function table(head: string[], rows: (string | number)[][]): string {
  const line = (r: (string | number)[]) => `| ${r.map((c) => String(c).replace(/\|/g, "\\|")).join(" | ")} |`;
  return [line(head), line(head.map(() => "---")), ...rows.map(line)].join("\n");
}

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

/** Per kind: RSS at K keys (case 5) minus idle (case 6), MB. */
function svcGrowth(rc: ReconcileResult, fp: FootprintResult | undefined): string {
  if (!fp) return "(idle not measured)";
  const idle = new Map(fp.idle.map((p) => [`${p.site}/${p.name}`, p.rss_mb]));
  const by = new Map<string, number[]>();
  for (const p of rc.rss_at_k) {
    if (!isService(p.kind)) continue;
    const i = idle.get(`${p.site}/${p.name}`);
    if (i === undefined) continue;
    by.set(p.kind, [...(by.get(p.kind) ?? []), p.rss_mb - i]);
  }
  return [...by.entries()].map(([k, v]) => `${k} +${fmt(Math.max(...v))} MB`).join(", ");
}

/** The share of nats.js's per-request Error objects (async traces) in the watcher's and merger's profile. */
function errorShareText(pr: ProfileResult | undefined): string {
  if (!pr) return "";
  const parts = pr.profiles
    .filter((p) => (p.site === "a" && p.kind === "watcher") || (p.site === "b" && p.kind === "merger"))
    .map((p) => {
      const share = p.summary.top
        .filter((f) => (f.fn === "RequestError" || f.fn === "TimeoutError") && f.where.includes("nats-core"))
        .reduce((a, f) => a + f.pct, 0);
      return `${p.site}/${p.kind} ${fmt(share)} %`;
    });
  return parts.length
    ? `Of the watcher's and merger's CPU, nats.js spends ${parts.join(", ")} constructing two Error objects per request (RequestError + TimeoutError, its async stack traces; the connection option \`noAsyncTraces: true\` turns them off) — see the profile.`
    : "";
}

const AGENT_IDLE_LIMIT_MB = 100;
const AGENT_AT_K_LIMIT_MB = 150;

/** The target row of the one-process variant (case 6's agent part). */
function agentRow(fp: FootprintResult | undefined): string[] {
  const title = `A site's agent (one process) ≤ ${AGENT_IDLE_LIMIT_MB} MB RSS idle, ≤ ${AGENT_AT_K_LIMIT_MB} MB at 100 000 keys`;
  const ag = fp?.agent;
  if (!ag) return [title, "–", verdict(null), ""];
  const idleMax = Math.max(...ag.idle.map((p) => p.rss_mb));
  const atKMax = Math.max(...ag.at_k.map((p) => p.rss_mb));
  const list = (l: ProcRss[]) => l.map((p) => `${p.site} ${fmt(p.rss_mb)}`).join(", ");
  const idleOk = idleMax <= AGENT_IDLE_LIMIT_MB;
  const kOk = ag.keys_per_site >= 100_000 ? atKMax <= AGENT_AT_K_LIMIT_MB : null;
  return [
    title,
    `idle **${fmt(idleMax, 1)} MB** (${list(ag.idle)}); at ${fmt(ag.keys_per_site)} keys **${fmt(atKMax, 1)} MB** (${list(ag.at_k)})`,
    kOk === null ? verdict(idleOk ? null : false) : verdict(idleOk && kOk),
    `Idle: one Node process, one connection, one set of site handles for the four services (four processes: 4 × ~63-74 MB). At K keys the shared _meta cache (one per bucket, where the watcher and the merger had one each) and the reconciler's version index (its own _meta watch) hold K entries each: those two in-memory copies of _meta are what limits it.`,
  ];
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
  const totalS = Object.values(r.durations_s).reduce((a, b) => a + b, 0);

  out.push("# nats-kv-syncd — benchmark results", "");
  out.push(
    `Generated by \`npm run bench${r.quick ? " -- --quick" : ""}\` (bench/main.ts) on ${r.started.slice(0, 16).replace("T", " ")} UTC, ` +
      `${r.quick ? "**quick mode** (small counts)" : "full mode"}, ${fmt(totalS)} s in all. ` +
      `Raw numbers: [\`${jsonRel}\`](${jsonRel}). Every case starts its own hub + sites a and b ` +
      "(test/harness/mesh.ts: free ports, temp dirs, real nats-server and service processes), with periodic anti-entropy off " +
      "(`--reconcile-interval 0`) so it does not interfere; every value is 100 bytes; writers run in the bench process.",
    "",
  );
  out.push(
    "All processes — servers, services, the bench's writer — share the same cores, so the absolute numbers are low and move " +
      "5-30 % between runs on this shared host. What holds are the **ratios measured in the same run** (syncd vs native, " +
      "1 vs 2 instances), each measured back to back.",
    "",
  );

  out.push("## Machine and versions", "");
  out.push(
    table(
      ["", ""],
      [
        ["CPU", `${m.nproc} cores (\`nproc\`), ${m.cpu_model}`],
        ["Memory", `${m.mem_gb} GB`],
        ["Kernel", m.kernel],
        [
          "Load average",
          `${m.loadavg_start.join(" / ")} at the start, ${m.loadavg_end.join(" / ")} at the end (1/5/15 min)`,
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
      ],
    ),
    "",
  );

  // ------------------------------------------------------------------ targets
  out.push("## Targets", "");
  const rows: string[][] = [];
  if (tp) {
    const c = cpuLine(tp.syncd.cpu);
    const ceiling = c.total > 0 ? (m.nproc * 1e6) / c.total : Number.NaN;
    const errShare = errorShareText(pr);
    const cpuTop = c.rows
      .slice(0, 3)
      .map((x) => `${x[0]} ${x[1]} µs`)
      .join(", ");
    rows.push([
      "Replicated throughput ≥ 50 % of native sourcing",
      `${fmt(tp.syncd_repl_ops_s)} ops/s vs native ${fmt(tp.native_repl_ops_s)} ops/s = **${pct(tp.ratio_vs_native, 1)}** (raw put at a: ${fmt(tp.raw_put_ops_s)} ops/s, ${pct(tp.ratio_vs_raw, 1)}; medians)`,
      verdict(tp.ratio_vs_native >= 0.5),
      `CPU. One replicated op costs ${fmt(c.total)} µs of CPU over all processes of the mesh (run with the least other work on the host) (${cpuTop}): with ${m.nproc} cores to itself the mesh could apply at most ~${fmt(ceiling)} ops/s. ` +
        `During that run the machine was ${fmt(tp.syncd.machine_cpu_pct)} % of one core busy (of ${m.nproc * 100} %): the mesh ${fmt(tp.syncd.mesh_cpu_pct)} %, the bench ${fmt(tp.syncd.bench_cpu_pct)} %, other work on the host ${others(tp.syncd.others_cpu_pct)}. ` +
        `Native sourcing costs no client CPU per op: it keeps up with the writer.${errShare ? ` ${errShare}` : ""}`,
    ]);
  } else rows.push(["Replicated throughput ≥ 50 % of native sourcing", "–", verdict(null), ""]);
  const l1 = lat?.syncd.find((x) => x.rate === 1000);
  const n1 = lat?.native.find((x) => x.rate === 1000);
  const lLow = lat?.syncd.find((x) => x.rate < 1000);
  if (l1) {
    const cap = tp?.syncd_repl_ops_s;
    const util = cap ? 1000 / cap : Number.NaN;
    const parts: string[] = [];
    if (cap)
      parts.push(
        `Throughput first: 1 000 ops/s is ${fmt(util * 100)} % of what the pipeline applies at most here (case 1: ${fmt(cap)} ops/s), ${util >= 0.8 ? "so ops queue (b's merger backlog) and the lag is mostly queueing time" : "so some queueing adds to the per-op path"}; b was complete ${fmt(l1.drain_ms)} ms after the last put ack.`,
      );
    if (lLow)
      parts.push(
        `The floor, at ${fmt(lLow.rate)} ops/s: p50 ${fmt(lLow.lag.p50_ms, 1)} ms, p99 ${fmt(lLow.lag.p99_ms, 1)} ms — the per-op path itself: watcher stamp (meta read + CAS + op publish), sourcing across the hub, merger (meta read + CAS + bucket write), about 5 acknowledged round trips in series plus the consumers' batching.`,
      );
    else
      parts.push(
        "Per-op path: watcher stamp (meta read + CAS + publish) → sourcing → merger (meta read + CAS + bucket write), about 5 acknowledged round trips in series.",
      );
    parts.push(
      `Other work on the shared host during the 1 000 ops/s run: ${others(l1.others_cpu_pct)} of one core.`,
    );
    rows.push([
      "Convergence p99 ≤ 10 ms at 1 000 ops/s",
      `p50 ${fmt(l1.lag.p50_ms, 1)} ms, **p99 ${fmt(l1.lag.p99_ms, 1)} ms**, max ${fmt(l1.lag.max_ms, 1)} ms (native: p50 ${fmt(n1?.lag.p50_ms, 2)}, p99 ${fmt(n1?.lag.p99_ms, 1)} ms)`,
      verdict(l1.lag.p99_ms <= 10),
      parts.join(" "),
    ]);
  } else rows.push(["Convergence p99 ≤ 10 ms at 1 000 ops/s", "–", verdict(null), ""]);
  if (rc) {
    rows.push([
      "Reconcile moves ≤ 2× the differing entries",
      `${fmt(rc.run.entries_moved)} moved for ${rc.differing} differing = **${fmt(rc.moved_per_differing, 2)}×** (${fmt(rc.keys_per_site)} keys per site)`,
      verdict(rc.moved_per_differing <= 2),
      `Digest descent: ${fmt(rc.run.ranges_descended)} ranges descended, ${fmt(rc.run.keys_compared)} keys compared.`,
    ]);
    const listing = rc.full_listing_bytes_with_values ?? rc.full_listing_bytes_computed;
    rows.push([
      "Reconcile bytes ≤ 5 % of a full listing",
      `${fmt(rc.run.bytes)} B vs ${fmt(listing)} B = **${fmt(rc.bytes_vs_listing_pct, 2)} %**`,
      verdict(rc.bytes_vs_listing_pct <= 5),
      `${fmt(rc.run.bytes / Math.max(1, rc.run.entries_moved))} B per moved entry (the entry itself is ~${fmt(listing / rc.keys_per_site)} B in a listing): the digests of the ${fmt(rc.run.ranges_descended)} differing ranges and the version lists of the leaves dominate; the share shrinks as the bucket grows${r.quick ? " (quick mode: 10 000 keys, so a larger share)" : ""}.`,
    ]);
  } else {
    rows.push(["Reconcile moves ≤ 2× the differing entries", "–", verdict(null), ""]);
    rows.push(["Reconcile bytes ≤ 5 % of a full listing", "–", verdict(null), ""]);
  }
  if (rc) {
    const svc = rc.rss_after_run.filter((p) => isService(p.kind));
    const max = svc.reduce((a, p) => Math.max(a, p.rss_mb), 0);
    const over = svc.filter((p) => p.rss_mb > RSS_LIMIT_MB);
    const idleMax = fp
      ? fp.idle.filter((p) => isService(p.kind)).reduce((a, p) => Math.max(a, p.rss_mb), 0)
      : Number.NaN;
    rows.push([
      `Each service ≤ ${RSS_LIMIT_MB} MB RSS at ${fmt(rc.keys_per_site)} keys`,
      `max ${fmt(max, 1)} MB (${svc.map((p) => `${p.site}/${p.kind} ${fmt(p.rss_mb)}`).join(", ")})`,
      verdict(over.length === 0),
      `Idle, before any key, a service already takes up to ${fmt(idleMax, 1)} MB (Node 20 itself ~44 MB bare, the NATS client, ajv with the compiled schemas${(r.services_mode.footprint ?? "").includes("tsx") ? ", and here the tsx loader: the services ran from source" : ""}); at ${fmt(rc.keys_per_site)} keys the watcher's and merger's _meta caches and the reconciler's version index add ${svcGrowth(rc, fp)}${over.length ? `; over the limit: ${over.map((p) => `${p.site}/${p.name}`).join(", ")}` : ""}. The reconcile case starts its services on the loaded state (case 5): RSS after a burst of ops is in section 6.`,
    ]);
  } else rows.push([`Each service ≤ ${RSS_LIMIT_MB} MB RSS at 100 000 keys`, "–", verdict(null), ""]);
  if (fp) {
    const g = fp.growth_mb_per_10k_ops.filter((x) => isService(x.kind));
    const worst = [...g].sort((x, y) => y.mb - x.mb)[0];
    const lastOps = fp.rounds[fp.rounds.length - 1]?.ops_total ?? 0;
    // first half for comparison: idle → the round the second half starts from
    const mid = fp.rounds.find((rd) => rd.ops_total === fp.growth_from_ops);
    const firstHalf = fp.idle
      .filter((p) => isService(p.kind))
      .map((p) => {
        const at = mid?.rss.find((x) => x.site === p.site && x.name === p.name)?.rss_mb ?? Number.NaN;
        return { who: `${p.site}/${p.kind}`, mb: at - p.rss_mb };
      })
      .sort((x, y) => y.mb - x.mb)
      .slice(0, 3);
    rows.push([
      "Memory not growing with op count",
      `RSS change from ${fmt(fp.growth_from_ops)} to ${fmt(lastOps)} puts over the same ${fmt(fp.keyset)} keys: ${g.map((x) => `${x.site}/${x.kind} ${x.mb >= 0 ? "+" : ""}${fmt(x.mb, 1)}`).join(", ")} MB per 10 000 ops`,
      verdict(worst ? worst.mb <= 1 : null),
      `Threshold used: ≤ 1 MB per 10 000 ops over the second half of the rounds${worst ? ` (worst: ${worst.site}/${worst.kind} +${fmt(worst.mb, 1)})` : ""}. ` +
        `The first half grew most (idle → ${fmt(fp.growth_from_ops)} puts: ${firstHalf.map((x) => `${x.who} +${fmt(x.mb)} MB`).join(", ")}): heaps growing to their working size under load; the per-round series in section 6 shows whether it flattens. ` +
        "RSS cannot tell a slow leak from heap sizing: a service reporting process.memoryUsage() (heapUsed) in its status would.",
    ]);
  } else rows.push(["Memory not growing with op count", "–", verdict(null), ""]);
  rows.push(agentRow(fp));
  out.push(table(["Target", "Measured", "Status", "Where it stands / what limits it"], rows), "");

  // ------------------------------------------------------------------ 1
  if (tp) {
    out.push("## 1. Replicated throughput", "");
    out.push(
      `${fmt(tp.syncd.n)} new keys put at site a, ${tp.syncd.window} puts in flight, until all are applied at b (b's \`KV_config\` stream message count, polled every 20 ms). ` +
        'Native: a stream at b sourcing a\'s `KV_config` across domains (`sources:[{name:"KV_config", external:{api:"$JS.a.API"}}]`), same writer, until it holds all messages. ' +
        "Raw: the same puts into a bucket nobody replicates, on the same server (before each native run). " +
        "Native and syncd runs alternate (native first and last), each on a fresh hub + sites; the ratios are of the medians. " +
        '"Other work" is the machine\'s busy CPU minus this mesh and the bench: other jobs on the shared host.',
      "",
    );
    const order: { label: string; row: (string | number)[] }[] = [];
    tp.native.forEach((nr, i) => {
      order.push({
        label: `native #${i + 1}`,
        row: [
          `native sourcing #${i + 1}`,
          fmt(nr.repl_ops_s),
          fmt(nr.put_ops_s),
          `${fmt(nr.catchup_ms)} ms`,
          fmt(nr.raw_put_ops_s),
          "–",
        ],
      });
      const sr = tp.syncd_runs[i];
      if (sr)
        order.push({
          label: `syncd #${i + 1}`,
          row: [
            `syncd #${i + 1} (1 instance each)`,
            `**${fmt(sr.repl_ops_s)}**`,
            fmt(sr.put_ops_s),
            `${fmt(sr.catchup_ms)} ms`,
            "–",
            others(sr.others_cpu_pct),
          ],
        });
    });
    out.push(
      table(
        [
          "run (in order)",
          "ops/s end to end",
          "put rate at a",
          "last put ack → complete at b",
          "raw put at a, ops/s",
          "other work on the host",
        ],
        order.map((o) => o.row),
      ),
      "",
    );
    out.push(
      `**syncd / native = ${pct(tp.ratio_vs_native, 1)}** (${fmt(tp.syncd_repl_ops_s)} / ${fmt(tp.native_repl_ops_s)} ops/s); syncd / raw put = ${pct(tp.ratio_vs_raw, 1)} (raw ${fmt(tp.raw_put_ops_s)} ops/s). ` +
        `In the syncd run with the least other work (shown below), CPU in % of one core: the mesh's processes ${fmt(tp.syncd.mesh_cpu_pct)} %, the bench process (writer + pollers) ${fmt(tp.syncd.bench_cpu_pct)} %, other work on the host ${others(tp.syncd.others_cpu_pct)}; the whole machine ${fmt(tp.syncd.machine_cpu_pct)} % of ${m.nproc * 100} %.`,
      "",
    );
    const c = cpuLine(tp.syncd.cpu);
    out.push(
      "CPU per replicated op during the syncd run (process CPU time from /proc/<pid>/stat over the run ÷ ops):",
      "",
    );
    out.push(
      table(
        ["process", "CPU µs per op", "% of one core"],
        [...c.rows, ["**all**", `**${fmt(c.total)}**`, ""]],
      ),
      "",
    );
  }

  // ------------------------------------------------------------------ 2
  if (lat) {
    out.push("## 2. Convergence latency at a fixed offered load", "");
    out.push(
      "Puts at a issued on a fixed schedule (not waiting for earlier acks), after 1 s of unrecorded warm-up at the same rate. " +
        "Lag = time the value is readable at b (a watch on b's bucket, in the bench process, matched by key) − the put's ack time at a. " +
        "Native: an ordered consumer on b's sourcing stream. Negative or tiny values mean b saw the entry before the writer's event loop processed the ack.",
      "",
    );
    const row = (kind: string, x: LatencyRun) => [
      `${kind} @ ${fmt(x.rate)}/s`,
      `${fmt(x.n)} (${fmt(x.offered_ops_s)}/s offered)`,
      `${fmt(x.received)}`,
      fmt(x.lag.p50_ms, 2),
      fmt(x.lag.p90_ms, 2),
      `**${fmt(x.lag.p99_ms, 2)}**`,
      fmt(x.lag.max_ms, 2),
      fmt(x.put_ack.p99_ms, 2),
      fmt(x.drain_ms),
      others(x.others_cpu_pct),
    ];
    out.push(
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
      "",
    );
  }

  // ------------------------------------------------------------------ 3
  if (cf) {
    out.push("## 3. Conflict-heavy", "");
    out.push(
      `Sites a and b each put ${fmt(cf.ops_per_site)} times into the same ${cf.keys} keys (${cf.window} in flight per site, both at once). ` +
        "Converged = both sites quiet (watcher and merger consumers: num_pending and num_ack_pending 0; sources caught up) and the same value and version (`_meta` ts, node_id, deleted) for every key, twice in a row.",
      "",
    );
    out.push(
      table(
        [
          "puts/s over both sites",
          "writers' end → identical and quiet",
          "quiet but different (polls)",
          "keys differing at the end",
        ],
        [
          [
            fmt(cf.write_ops_s),
            cf.converge_ms === null ? `**not within ${fmt(cf.limit_s)} s**` : `**${fmt(cf.converge_ms)} ms**`,
            fmt(cf.quiet_but_different),
            fmt(cf.differing_keys_at_end),
          ],
        ],
      ),
      "",
    );
    out.push(
      table(
        ["site", "merger counts", "watcher counts"],
        ["a", "b"].map((s) => [
          s,
          JSON.stringify(cf.merger_counts[s] ?? {}),
          JSON.stringify(cf.watcher_counts[s] ?? {}),
        ]),
      ),
      "",
    );
  }

  // ------------------------------------------------------------------ 4
  if (sc) {
    out.push("## 4. Scale-out", "");
    out.push(
      `Case 1's syncd run (${fmt(sc.one_runs[0]?.n)} keys) on a fresh mesh with 1, then 2, merger and watcher instances per site, ` +
        `${sc.one_runs.length > 1 ? "alternating (1, 2, 1, 2); the speed-up is the ratio of the medians" : "back to back"}. ` +
        "The last columns split the machine's CPU: this mesh's processes vs other work on the shared host during the run.",
      "",
    );
    const row = (x: SyncdRun, label: string) => {
      const w = x.cpu.filter((c) => c.kind === "watcher" && c.site === "a");
      const mg = x.cpu.filter((c) => c.kind === "merger" && c.site === "b");
      return [
        label,
        `**${fmt(x.repl_ops_s)}**`,
        fmt(x.put_ops_s),
        `${w.map((c) => `${fmt(c.pct_core)} %`).join(" + ")}`,
        `${mg.map((c) => `${fmt(c.pct_core)} %`).join(" + ")}`,
        `${fmt(x.mesh_cpu_pct)} %`,
        others(x.others_cpu_pct),
      ];
    };
    const runs: (string | number)[][] = [];
    for (let i = 0; i < Math.max(sc.one_runs.length, sc.two_runs.length); i++) {
      const o = sc.one_runs[i];
      const t = sc.two_runs[i];
      if (o) runs.push(row(o, `1 merger, 1 watcher #${i + 1}`));
      if (t) runs.push(row(t, `2 mergers, 2 watchers #${i + 1}`));
    }
    out.push(
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
      "",
    );
    const c1 = sc.cpu_us_per_op.one;
    const c2 = sc.cpu_us_per_op.two;
    out.push(
      `**Speed-up ${fmt(sc.speedup, 2)}×** (${fmt(sc.one_ops_s)} → ${fmt(sc.two_ops_s)} ops/s, medians). ` +
        `CPU per op summed over the instances: a's watchers ${fmt(c1.watcher)} → ${fmt(c2.watcher)} µs, b's mergers ${fmt(c1.merger)} → ${fmt(c2.merger)} µs ` +
        `(${fmt(((c2.watcher + c2.merger) / Math.max(1, c1.watcher + c1.merger) - 1) * 100)} % more with two instances). ` +
        `With ${m.nproc} cores shared by everything and the mesh already using most of them, a second instance can only add throughput where a core is idle; what it costs shows in the CPU per op.`,
      "",
    );
  }

  // ------------------------------------------------------------------ 5
  if (rc) {
    out.push("## 5. Reconcile cost", "");
    out.push(
      `${fmt(rc.keys_per_site)} keys per site with identical versions, loaded directly: ${rc.load.method} (${fmt(rc.load.ms / 1000, 1)} s, ${fmt(rc.load.puts_per_s)} publishes/s — loading through the services would take minutes at case 1's rate). ` +
        `Services then started and caught up (watchers skip the loaded entries as replicated writes; reconcilers index \`_meta\`) in ${fmt(rc.services_ready_ms / 1000, 1)} s. ` +
        `${rc.differing} differences planted behind the services' back, in the merger's commit order (\`_meta\` with \`merged\` and \`vh\`, then the bucket entry with \`Syncd-Ts\`/\`Syncd-Node\`, so no op is published): half newer at a, half newer at b. Then \`syncd.a.reconciler.run {}\`.`,
      "",
    );
    const listing = rc.full_listing_bytes_with_values ?? rc.full_listing_bytes_computed;
    out.push(
      table(
        ["", "entries moved", "bytes", "keys compared", "ranges descended", "ms (reported / wall)"],
        [
          [
            "run with 100 differing",
            `**${fmt(rc.run.entries_moved)}** (pulled ${fmt(rc.run.pulled)}, pushed ${fmt(rc.run.pushed)}, skipped ${fmt(rc.run.skipped ?? 0)})`,
            `**${fmt(rc.run.bytes)}**`,
            fmt(rc.run.keys_compared),
            fmt(rc.run.ranges_descended),
            `${fmt(rc.run.ms)} / ${fmt(rc.run_wall_ms)}`,
          ],
          ...(rc.rerun
            ? [
                [
                  `second run (${rc.roots_equal_after_repair ? "equal root digests" : "root digests still differed"})`,
                  fmt(rc.rerun.entries_moved),
                  fmt(rc.rerun.bytes),
                  fmt(rc.rerun.keys_compared),
                  fmt(rc.rerun.ranges_descended),
                  fmt(rc.rerun.ms),
                ],
              ]
            : []),
        ],
      ),
      "",
    );
    out.push(
      table(
        ["full listing of the bucket", "bytes"],
        [
          [
            "`entries` of the whole bucket with values (request + reply payloads, paged)",
            `${fmt(rc.full_listing_bytes_with_values)}${rc.full_listing_with_values_ms ? ` (${fmt(rc.full_listing_with_values_ms)} ms)` : ""}`,
          ],
          ["`entries` of the whole bucket, versions only", fmt(rc.full_listing_bytes_versions)],
          ["Σ key + version JSON + value over all entries", fmt(rc.full_listing_bytes_computed)],
        ],
      ),
      "",
    );
    out.push(
      `Moved ${fmt(rc.moved_per_differing, 2)}× the differing entries; ${fmt(rc.bytes_vs_listing_pct, 2)} % of the full listing (${fmt(listing)} B). Repaired (every planted version at both sites afterwards): ${rc.repaired ? "yes" : "**no**"}.`,
      "",
    );
  }

  // ------------------------------------------------------------------ 6
  if (fp || rc || tp) {
    out.push("## 6. Footprint", "");
    out.push(
      "RSS = VmRSS from /proc/<pid>/status, MB. Idle: a fresh mesh after a 300-key warm-up. Rounds: M puts at a over a fixed set of keys, until the mesh is quiet, RSS after each round. At K keys: the reconcile mesh (case 5) after the services caught up, and after the run.",
      "",
    );
    if (fp?.agent) {
      const ag = fp.agent;
      out.push(
        `One process per site (services/agent, \`MODE=agent\`): idle ${ag.idle.map((p) => `${p.site}/${p.name} ${fmt(p.rss_mb, 1)}`).join(", ")} MB; at ${fmt(ag.keys_per_site)} keys per site (loaded as in case 5, agents started on it, caught up in ${fmt(ag.ready_s, 1)} s) ${ag.at_k.map((p) => `${p.site}/${p.name} ${fmt(p.rss_mb, 1)}`).join(", ")} MB.`,
        "",
      );
    }
    const idle = rssByService(fp?.idle);
    const r1 = rssByService(fp?.rounds[0]?.rss);
    const rl = rssByService(fp?.rounds[fp.rounds.length - 1]?.rss);
    const atK = rssByService(rc?.rss_at_k);
    const afterRun = rssByService(rc?.rss_after_run);
    const afterTp = rssByService(tp?.syncd.rss_after);
    const names = [...new Set([...idle.keys(), ...atK.keys(), ...afterTp.keys()])].sort();
    const lastOps = fp?.rounds[fp.rounds.length - 1]?.ops_total;
    out.push(
      table(
        [
          "process",
          "idle",
          fp ? `after ${fmt(fp.rounds[0]?.ops_total)} ops` : "rounds",
          fp ? `after ${fmt(lastOps)} ops` : "",
          tp ? `after case 1 (${fmt(tp.syncd.n)} keys)` : "case 1",
          rc ? `at ${fmt(rc.keys_per_site)} keys` : "at K keys",
          "after reconcile",
        ],
        names.map((n) => [
          n,
          fmt(idle.get(n), 1),
          fmt(r1.get(n), 1),
          fmt(rl.get(n), 1),
          fmt(afterTp.get(n), 1),
          fmt(atK.get(n), 1),
          fmt(afterRun.get(n), 1),
        ]),
      ),
      "",
    );
    if (fp) {
      const svc = (fp.rounds[0]?.rss ?? []).filter((p) => isService(p.kind));
      out.push(
        `RSS (MB) after each round of ${fmt(fp.ops_per_round)} puts over the same ${fmt(fp.keyset)} keys:`,
        "",
      );
      out.push(
        table(
          ["after puts", ...svc.map((p) => `${p.site}/${p.name}`)],
          [
            [
              "idle",
              ...svc.map((p) => fmt(fp.idle.find((x) => x.site === p.site && x.name === p.name)?.rss_mb, 1)),
            ],
            ...fp.rounds.map((rd) => [
              fmt(rd.ops_total),
              ...svc.map((p) => fmt(rd.rss.find((x) => x.site === p.site && x.name === p.name)?.rss_mb, 1)),
            ]),
          ],
        ),
        "",
      );
      out.push(
        `CPU µs per put per round (${fmt(fp.ops_per_round)} overwrites of ${fmt(fp.keyset)} keys per round; the bucket keeps one revision per key, so the watcher sees and stamps only some of the puts and fewer ops replicate than puts), and puts/s until quiet:`,
        "",
      );
      const procs = (fp.rounds[0]?.cpu ?? []).filter((c) => isService(c.kind) || c.kind === "nats-server");
      out.push(
        table(
          ["round", "puts/s", ...procs.map((c) => `${c.site}/${c.name}`)],
          fp.rounds.map((rd, i) => [
            String(i + 1),
            fmt(rd.ops_s),
            ...procs.map((c) => fmt(rd.cpu.find((x) => x.site === c.site && x.name === c.name)?.us_per_op)),
          ]),
        ),
        "",
      );
    }
  }

  // ------------------------------------------------------------------ profile
  if (pr) {
    out.push("## Where the CPU goes (CPU profile of case 1)", "");
    out.push(
      `Case 1's syncd run again (${fmt(pr.run.n)} keys, ${fmt(pr.run.repl_ops_s)} ops/s while profiled), every service under the V8 CPU profiler ` +
        `(sampling every ${pr.interval_us} µs; Node 20 refuses \`--cpu-prof\` in NODE_OPTIONS, so \`NODE_OPTIONS=--import=bench/lib/cpu-profiler.mjs\` starts the same profiler through node:inspector and writes the same .cpuprofile). ` +
        "Only the samples inside the measured window count (start-up and tsx compilation excluded). The .cpuprofile files of the last run stay in `bench/work/` (not committed) for Chrome DevTools. " +
        "Self time = in the function itself; the repo's functions are also listed by inclusive time (with callees). " +
        "Compiled services show the file of the source with the line of the compiled JavaScript in dist/ (close to the source); under tsx the repo's .ts files have no usable line numbers and show the file only.",
      "",
    );
    if (pr.missing.length) out.push(`No profile from: ${pr.missing.join(", ")}.`, "");
    const order = (p: ServiceProfile) =>
      p.site === "a" && p.kind === "watcher" ? 0 : p.site === "b" && p.kind === "merger" ? 1 : 2;
    const main = pr.profiles.filter((p) => order(p) < 2).sort((x, y) => order(x) - order(y));
    const others = pr.profiles.filter((p) => order(p) === 2);
    out.push(
      "µs per op below = the function's share of the profile's busy samples × the process's CPU per op from /proc over the same window. " +
        "(The profile's own busy time is larger than the CPU time on this loaded host: a sample also lands while the process is runnable but waiting for a core.)",
      "",
    );
    out.push(
      table(
        ["process", "CPU µs per op (/proc)", "busy in the profile", "idle in the profile"],
        pr.profiles.map((p) => [
          `${p.site}/${p.name}`,
          fmt(p.cpu_us_per_op),
          `${fmt(p.summary.busy_ms)} ms (${fmt(p.busy_us_per_op)} µs per op)`,
          `${fmt(p.summary.idle_ms)} ms`,
        ]),
      ),
      "",
    );
    for (const p of main) {
      const role = p.kind === "watcher" ? "stamps each local write" : "applies each remote op";
      const perOp = (pctOf: number) => fmt((pctOf / 100) * p.cpu_us_per_op, 1);
      out.push(`### ${p.site}/${p.name} (${role}): ${fmt(p.cpu_us_per_op)} µs CPU per op`, "");
      out.push("By package / area (self time):", "");
      out.push(
        table(
          ["area", "% of busy", "µs per op"],
          p.summary.groups.slice(0, 10).map((g) => [g.group, `${fmt(g.pct, 1)} %`, perOp(g.pct)]),
        ),
        "",
      );
      out.push("Top functions by self time:", "");
      out.push(
        table(
          ["function", "where", "% of busy", "µs per op"],
          p.summary.top
            .slice(0, 15)
            .map((f) => [f.fn, f.where || "(native)", `${fmt(f.pct, 1)} %`, perOp(f.pct)]),
        ),
        "",
      );
      out.push("The repo's functions by inclusive time:", "");
      out.push(
        table(
          ["function", "file", "% of busy", "µs per op"],
          p.summary.repo_inclusive
            .slice(0, 10)
            .map((f) => [f.fn, f.where, `${fmt(f.pct, 1)} %`, perOp(f.pct)]),
        ),
        "",
      );
    }
    if (others.length) {
      out.push("The other services, top 5 by self time:", "");
      out.push(
        table(
          ["process", "top functions (self, % of its busy time)"],
          others.map((p) => [
            `${p.site}/${p.name}`,
            p.summary.top
              .slice(0, 5)
              .map((f) => `${f.fn} (${f.where || "native"}) ${fmt(f.pct, 1)} %`)
              .join("; "),
          ]),
        ),
        "",
      );
    }
  }

  if (Object.keys(r.errors).length) {
    out.push("## Failed cases", "");
    for (const [k, v] of Object.entries(r.errors)) out.push(`- **${k}**: \`${v.split("\n")[0]}\``);
    out.push("");
  }

  const st = r.results.sites as SitesResult | undefined;
  if (st) out.push(...renderSites(st));

  out.push("## Reading", "", keptNotes(existingFile), "");

  out.push("## Re-running", "");
  out.push(
    [
      "```sh",
      "npm run bench                        # every case (~3-6 min here), writes bench/RESULTS.md + bench/results/<date>.json",
      "npm run bench -- --quick             # small counts (~1 min); report in bench/results/<date>-quick.md",
      "npm run bench -- --case reconcile    # one case (or a comma-separated list); report next to its JSON",
      "npm run bench -- --tsx               # services from their TypeScript sources (default: the compiled build)",
      "npm run bench -- --render bench/results/<date>.json   # only rewrite the report of an earlier run",
      "BENCH_TIMEOUT_S=1200 npm run bench   # watchdog (default 900 s, quick 300 s)",
      "```",
      "",
      `Cases: throughput, latency, conflict, scaleout, reconcile, footprint, profile. Durations of this run: ${Object.entries(
        r.durations_s,
      )
        .map(([k, v]) => `${k} ${v} s`)
        .join(", ")}.`,
      "Everything the bench starts runs on free loopback ports in temp dirs and is stopped by the bench (and killed by the harness's exit hook if the bench dies); every wait is bounded.",
    ].join("\n"),
    "",
  );
  return out.join("\n");
}
