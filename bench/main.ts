/**
 * npm run bench [-- --quick] [-- --case <name>[,<name>..]] [-- --no-write]
 *
 * Starts its own hub + sites (test/harness/mesh.ts: free ports, temp dirs) for every case, measures,
 * stops everything it started, and writes bench/results/<date>.json plus a report: bench/RESULTS.md
 * for a full run of every case, bench/results/<date>[-quick].md for a quick or partial run.
 * Every loop is bounded; a watchdog (BENCH_TIMEOUT_S, default 900 s, quick 300 s) ends the run and,
 * through the harness's exit hook, every process it started.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { conflictCase } from "./cases/conflict.ts";
import { footprintCase } from "./cases/footprint.ts";
import { hubCase } from "./cases/hub.ts";
import { latencyCase } from "./cases/latency.ts";
import { profileCase } from "./cases/profile.ts";
import { reconcileCase } from "./cases/reconcile.ts";
import { scaleCase } from "./cases/scaleout.ts";
import { sitesCase } from "./cases/sites.ts";
import { throughputCase } from "./cases/throughput.ts";
import type { BenchContext, CaseDef } from "./cases/types.ts";
import { ensureBuild, servicesMode } from "./lib/build.ts";
import { machineInfo } from "./lib/machine.ts";
import { log } from "./lib/util.ts";
import { type BenchReport, renderResults } from "./report.ts";

const BENCH_DIR = path.dirname(new URL(import.meta.url).pathname);

const CASES: CaseDef[] = [
  throughputCase,
  latencyCase,
  conflictCase,
  scaleCase,
  reconcileCase,
  footprintCase,
  profileCase,
  sitesCase,
  hubCase,
];

/** A full run: not quick, every case. Only such a run's report is bench/RESULTS.md. */
function isFullRun(r: BenchReport): boolean {
  return !r.quick && CASES.every((c) => r.cases.includes(c.name));
}

function usage(): string {
  return [
    "usage: npm run bench -- [--quick] [--case <name>[,<name>...]] [--tsx] [--no-write]",
    "  --tsx: run the services from their TypeScript sources (SYNCD_TSX=1) instead of the compiled build",
    "  --render <results.json>: only rewrite the report of an earlier run (RESULTS.md for a full run)",
    `cases: ${CASES.map((c) => c.name).join(", ")}`,
  ].join("\n");
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      quick: { type: "boolean", default: false },
      case: { type: "string", multiple: true },
      "no-write": { type: "boolean", default: false },
      tsx: { type: "boolean", default: false },
      render: { type: "string" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    console.log(usage());
    return 0;
  }
  if (values.render) {
    const jsonFile = path.resolve(values.render);
    const report = JSON.parse(readFileSync(jsonFile, "utf8")) as BenchReport;
    const md = isFullRun(report) ? path.join(BENCH_DIR, "RESULTS.md") : jsonFile.replace(/\.json$/, ".md");
    writeFileSync(md, renderResults(report, md, path.relative(path.dirname(md), jsonFile)));
    log(`wrote ${path.relative(process.cwd(), md)} from ${path.relative(process.cwd(), jsonFile)}`);
    return 0;
  }
  const wanted = (values.case ?? []).flatMap((c) => c.split(",")).filter(Boolean);
  for (const w of wanted) {
    if (!CASES.some((c) => c.name === w)) {
      console.error(`unknown case ${JSON.stringify(w)}\n${usage()}`);
      return 2;
    }
  }
  const quick = values.quick ?? false;
  const selected = wanted.length ? CASES.filter((c) => wanted.includes(c.name)) : CASES;
  const timeoutS = Number(process.env.BENCH_TIMEOUT_S ?? (quick ? 300 : 900));
  const watchdog = setTimeout(() => {
    console.error(`bench: watchdog: exceeded ${timeoutS} s, aborting (started processes are killed on exit)`);
    process.exit(3);
  }, timeoutS * 1000);
  watchdog.unref();

  if (values.tsx) process.env.SYNCD_TSX = "1";
  const buildMode = ensureBuild();
  log(`services run ${buildMode === "compiled" ? "compiled (dist/)" : "from TypeScript through tsx"}`);
  const started = new Date();
  const workDir = path.join(BENCH_DIR, "work");
  mkdirSync(workDir, { recursive: true });
  const machine = await machineInfo();
  log(
    `machine: ${machine.nproc} cores, ${machine.cpu_model}, ${machine.mem_gb} GB, load ${machine.loadavg_start.join(" ")}`,
  );
  log(`running ${selected.map((c) => c.name).join(", ")}${quick ? " (quick)" : ""}`);
  const ctx: BenchContext = { quick, results: {}, workDir };
  const errors: Record<string, string> = {};
  const durations: Record<string, number> = {};
  const modes: Record<string, string> = {};
  for (const c of selected) {
    log(`=== ${c.title}`);
    const t0 = Date.now();
    const modeBefore = servicesMode();
    try {
      ctx.results[c.name] = await c.run(ctx);
    } catch (err) {
      const msg = (err as Error).stack ?? String(err);
      errors[c.name] = msg;
      log(`${c.name} FAILED: ${msg}`);
    }
    durations[c.name] = Math.round((Date.now() - t0) / 1000);
    const modeAfter = servicesMode();
    modes[c.name] = modeBefore === modeAfter ? modeBefore : `${modeBefore}, then ${modeAfter}`;
    log(`=== ${c.name} took ${durations[c.name]} s`);
  }
  const report: BenchReport = {
    started: started.toISOString(),
    finished: new Date().toISOString(),
    quick,
    cases: selected.map((c) => c.name),
    machine: { ...machine, loadavg_end: (await machineInfo()).loadavg_start },
    durations_s: durations,
    services_mode: modes,
    results: ctx.results,
    errors,
  };
  if (!values["no-write"]) {
    const resultsDir = path.join(BENCH_DIR, "results");
    mkdirSync(resultsDir, { recursive: true });
    const stamp = started.toISOString().replace(/[:]/g, "-").replace(/\..*/, "");
    const jsonFile = path.join(resultsDir, `${stamp}${quick ? "-quick" : ""}.json`);
    writeFileSync(jsonFile, `${JSON.stringify(report, null, 2)}\n`);
    // Only a full run of every case replaces bench/RESULTS.md; a quick or partial run writes its
    // report next to its JSON.
    const full = isFullRun(report);
    const md = full ? path.join(BENCH_DIR, "RESULTS.md") : jsonFile.replace(/\.json$/, ".md");
    writeFileSync(md, renderResults(report, md, path.relative(path.dirname(md), jsonFile)));
    log(`wrote ${path.relative(process.cwd(), md)} and ${path.relative(process.cwd(), jsonFile)}`);
  }
  clearTimeout(watchdog);
  return Object.keys(errors).length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
