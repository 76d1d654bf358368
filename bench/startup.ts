/**
 * npm run bench:startup — the start-up catch-up on a loaded site, alone: K keys per site (STARTUP_KEYS,
 * default 100 000) loaded behind the services' back (as bench case 5), then the services started on them
 * (one agent per site, or STARTUP_AGENT=0 one process per service). Every 2 s it logs each phase's
 * progress (watcher and merger backlog, source lag, the reconciler index's keys, RSS); at the end the
 * seconds until linked, quiet and indexed. STARTUP_PROFILE=<dir> writes a .cpuprofile per service process;
 * STARTUP_MEM=<dir> logs each process's memory split at the end (bench/lib/mem-probe.mjs) and its RSS by
 * mapping (procstat.ts mapsOf);
 * STARTUP_NODE_FLAGS passes V8 flags to the service processes (NODE_OPTIONS); RSS again after
 * STARTUP_SETTLE_S (30) seconds idle.
 */
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { Kvm } from "@nats-io/kv";
import { type ReconcilerStatusResponse, metaBucket } from "../services/mod.ts";
import { loadSite } from "./cases/reconcile.ts";
import { ensureBuild } from "./lib/build.ts";
import {
  BUCKET,
  type BenchMesh,
  backlog,
  call,
  linked,
  openSite,
  processes,
  quiet,
  startBenchMesh,
} from "./lib/mesh.ts";
import { mapsOf, rssOf } from "./lib/procstat.ts";
import { log, nowMs, round, waitUntil } from "./lib/util.ts";

const K = Number(process.env.STARTUP_KEYS ?? 100_000);
const agent = process.env.STARTUP_AGENT !== "0";
const profDir = process.env.STARTUP_PROFILE;
/** a dir: each service process writes its memory split there (bench/lib/mem-probe.mjs) */
const memDir = process.env.STARTUP_MEM;
/** extra V8 flags for the service processes (NODE_OPTIONS), e.g. "--max-semi-space-size=2" */
const nodeFlags = process.env.STARTUP_NODE_FLAGS;
/** RSS is taken 1 s after the catch-up, and again after this many seconds idle */
const settleS = Number(process.env.STARTUP_SETTLE_S ?? 30);

async function main(): Promise<void> {
  log(`services run ${ensureBuild()}`);
  const flags: string[] = [];
  if (profDir) {
    flags.push(`--import=${new URL("./lib/cpu-profiler.mjs", import.meta.url).pathname}`);
    process.env.SYNCD_BENCH_CPUPROF_DIR = profDir;
    process.env.SYNCD_BENCH_CPUPROF_INTERVAL_US = "1000";
  }
  if (memDir) {
    flags.push(`--import=${new URL("./lib/mem-probe.mjs", import.meta.url).pathname}`);
    process.env.SYNCD_BENCH_MEM_DIR = memDir;
  }
  if (nodeFlags) flags.push(nodeFlags);
  const saved = process.env.NODE_OPTIONS;
  const bm: BenchMesh = await startBenchMesh({ services: false, agent });
  try {
    for (const s of bm.sites) {
      await new Kvm(bm.conn[s]!.nc).create(metaBucket(BUCKET), { history: 1 });
      bm.conn[s] = await openSite(bm.mesh, s, true);
    }
    const base = (Date.now() - 3_600_000) * 1000;
    await Promise.all(bm.sites.map((s) => loadSite(bm.conn[s]!.nc, K, base, () => {})));
    log(`loaded ${K} keys per site`);
    const t0 = nowMs();
    const at = (): number => round((nowMs() - t0) / 1000, 1);
    const marks: Record<string, number> = {};
    if (flags.length > 0) process.env.NODE_OPTIONS = [saved, ...flags].filter(Boolean).join(" ");
    await Promise.all(bm.sites.map((s) => bm.mesh.startServices(s)));
    marks.started = at();
    if (saved === undefined) Reflect.deleteProperty(process.env, "NODE_OPTIONS");
    else process.env.NODE_OPTIONS = saved;
    let done = false;
    const ticker = (async () => {
      while (!done) {
        await new Promise((r) => setTimeout(r, 2000));
        if (done) break;
        const parts: string[] = [];
        for (const s of bm.sites) {
          const b = await backlog(bm.conn[s]!.jsm, s).catch(() => undefined);
          const st = await call<ReconcilerStatusResponse>(
            bm.conn[s]!.nc,
            s,
            "reconciler",
            "status",
            {},
            2000,
          ).catch(() => undefined);
          parts.push(
            `${s}: w ${b?.watcher ?? "?"} m ${b?.merger ?? "?"} lag ${b?.source_lag ?? "?"} idx ${st?.value.keys[BUCKET] ?? "?"}`,
          );
        }
        const rss = rssOf(processes(bm).filter((p) => p.kind !== "nats-server" && p.kind !== "hub"));
        log(
          `t=${at()} ${parts.join(" | ")} | rss ${rss.map((p) => `${p.site}/${p.name} ${p.rss_mb}`).join(" ")}`,
        );
      }
    })();
    await linked(bm, 600_000);
    marks.linked = at();
    await quiet(bm, 600_000);
    marks.quiet = at();
    for (const s of bm.sites)
      await waitUntil(
        `index of ${s}`,
        async () =>
          (await call<ReconcilerStatusResponse>(bm.conn[s]!.nc, s, "reconciler", "status")).value.keys[
            BUCKET
          ] === K,
        600_000,
        200,
      );
    marks.indexed = at();
    done = true;
    await ticker;
    await new Promise((r) => setTimeout(r, 1000));
    const rss = rssOf(processes(bm).filter((p) => p.kind !== "nats-server" && p.kind !== "hub"));
    if (memDir)
      for (const f of readdirSync(memDir)) log(`memory ${f} ${readFileSync(join(memDir, f), "utf8")}`);
    const services = processes(bm).filter((p) => p.kind !== "nats-server" && p.kind !== "hub");
    const logMaps = (when: string): void => {
      if (memDir)
        for (const p of services) log(`maps ${when} ${p.site}/${p.name} ${JSON.stringify(mapsOf(p.pid))}`);
    };
    logMaps("+1s");
    log(`marks ${JSON.stringify(marks)} rss ${rss.map((p) => `${p.site}/${p.name} ${p.rss_mb}`).join(" ")}`);
    await new Promise((r) => setTimeout(r, settleS * 1000));
    const later = rssOf(processes(bm).filter((p) => p.kind !== "nats-server" && p.kind !== "hub"));
    if (memDir)
      for (const f of readdirSync(memDir))
        log(`memory +${settleS}s ${f} ${readFileSync(join(memDir, f), "utf8")}`);
    log(`rss +${settleS}s idle ${later.map((p) => `${p.site}/${p.name} ${p.rss_mb}`).join(" ")}`);
    logMaps(`+${settleS}s`);
    if (process.env.STARTUP_LOGS)
      for (const l of bm.mesh.logs(undefined, 400).split("\n"))
        if (new RegExp(process.env.STARTUP_LOGS).test(l)) log(l.slice(0, 300));
  } finally {
    await bm.stop();
  }
}

await main();
