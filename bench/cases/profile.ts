/**
 * CPU profile of the services during case 1. Node 20 refuses --cpu-prof in NODE_OPTIONS and the
 * harness has no hook for node flags, so the mesh is started with
 * NODE_OPTIONS="--import=bench/lib/cpu-profiler.mjs" (scripts/lib/services.ts passes the environment
 * through to every service process; nats-server ignores it): the V8 CPU profiler, the same one and the
 * same file format as --cpu-prof. Case 1's syncd run is measured, every service gets SIGTERM (it exits
 * through process.exit, which writes the profile), and the samples inside the measured window are summed:
 * self time per function and per package, inclusive time of the repo's own functions, per op.
 * Profiling slows the services down; the throughput of this run is not case 1's number.
 */
import { mkdirSync, readdirSync, rmSync } from "node:fs";
import * as path from "node:path";
import { REPO_ROOT } from "../../scripts/lib/topology.ts";
import { type ProfileSummary, summarizeProfile } from "../lib/cpuprofile.ts";
import { log, round, sleep, waitUntil } from "../lib/util.ts";
import { type SyncdRun, syncdThroughput } from "./throughput.ts";
import type { BenchContext, CaseDef } from "./types.ts";

export type ServiceProfile = {
  site: string;
  name: string;
  kind: string;
  /** the profile, kept until the next profile run (bench/work is not committed) */
  file: string;
  /** busy µs per op in the window from the profile: samples not idle, incl. time runnable but not scheduled */
  busy_us_per_op: number;
  /** CPU µs per op of the process over the same window (/proc utime + stime) */
  cpu_us_per_op: number;
  summary: ProfileSummary;
};

export type ProfileResult = {
  run: SyncdRun;
  interval_us: number;
  profiles: ServiceProfile[];
  missing: string[];
};

const INTERVAL_US = 500;

export const profileCase: CaseDef = {
  name: "profile",
  title: "CPU profile of the watcher and merger during case 1 (node --cpu-prof)",
  async run(ctx: BenchContext): Promise<ProfileResult> {
    const n = ctx.quick ? 3_000 : 10_000;
    // only the latest run's profiles are kept
    for (const d of readdirSync(ctx.workDir))
      if (d.startsWith("cpuprof-")) rmSync(path.join(ctx.workDir, d), { recursive: true, force: true });
    const dir = path.join(ctx.workDir, `cpuprof-${Date.now()}`);
    mkdirSync(dir, { recursive: true });
    const saved = process.env.NODE_OPTIONS;
    const flags = `--import=${path.join(REPO_ROOT, "bench/lib/cpu-profiler.mjs")}`;
    process.env.NODE_OPTIONS = saved ? `${saved} ${flags}` : flags;
    process.env.SYNCD_BENCH_CPUPROF_DIR = dir;
    process.env.SYNCD_BENCH_CPUPROF_INTERVAL_US = String(INTERVAL_US);
    const restore = () => {
      if (saved === undefined) Reflect.deleteProperty(process.env, "NODE_OPTIONS");
      else process.env.NODE_OPTIONS = saved;
      Reflect.deleteProperty(process.env, "SYNCD_BENCH_CPUPROF_DIR");
      Reflect.deleteProperty(process.env, "SYNCD_BENCH_CPUPROF_INTERVAL_US");
    };
    const profiles: ServiceProfile[] = [];
    const missing: string[] = [];
    try {
      const run = await syncdThroughput("profile/syncd", n, undefined, {
        beforeStop: async (bm) => {
          // restore before anything else could be spawned
          restore();
          const insts = bm.sites.flatMap((s) => bm.mesh.services(s)).filter((i) => i.pid > 0);
          for (const i of insts) process.kill(i.pid, "SIGTERM");
          // each writes its profile on exit; bounded wait
          await waitUntil(
            "profiled services to exit",
            () => insts.every((i) => !i.alive()),
            30_000,
            100,
          ).catch((err: unknown) => log(`profile: ${(err as Error).message}`));
          await sleep(300);
        },
      });
      const who = new Map(run.cpu.map((c) => [c.pid, c]));
      const files = readdirSync(dir).filter((f) => f.endsWith(".cpuprofile"));
      const kept = new Set<string>();
      // <instance>.<pid>.cpuprofile
      for (const f of files) {
        const m = /\.(\d+)\.cpuprofile$/.exec(f);
        const p = m ? who.get(Number(m[1])) : undefined;
        if (!p) continue;
        const summary = summarizeProfile(path.join(dir, f), run.window_us[0], run.window_us[1], REPO_ROOT);
        profiles.push({
          site: p.site,
          name: p.name,
          kind: p.kind,
          file: path.relative(REPO_ROOT, path.join(dir, f)),
          busy_us_per_op: round((summary.busy_ms * 1000) / run.n),
          cpu_us_per_op: p.us_per_op,
          summary,
        });
        kept.add(f);
      }
      for (const c of run.cpu)
        if (
          (c.kind === "watcher" || c.kind === "merger") &&
          !profiles.some((p) => p.name === c.name && p.site === c.site)
        )
          missing.push(`${c.site}/${c.name}`);
      for (const f of files) if (!kept.has(f)) rmSync(path.join(dir, f), { force: true });
      profiles.sort((x, y) => x.site.localeCompare(y.site) || x.name.localeCompare(y.name));
      if (missing.length) log(`profile: no profile from ${missing.join(", ")}`);
      return { run, interval_us: INTERVAL_US, profiles, missing };
    } finally {
      restore();
    }
  },
};
