/** RSS and CPU time of processes, from Linux /proc. */
import { readFileSync, readdirSync } from "node:fs";
import type { ProcCpu, ProcRss } from "../cases/types.ts";
import { round } from "./util.ts";

const CLK_TCK = 100;

/** Resident set size in MB (VmRSS), or NaN when the process is gone. */
export function rssMb(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/status`, "utf8");
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(s);
    return m ? Math.round((Number(m[1]) / 1024) * 10) / 10 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/** utime + stime of a process in ms (clock ticks of 10 ms), or NaN when it is gone. */
export function cpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK;
  } catch {
    return Number.NaN;
  }
}

/**
 * CPU time of a process in ms from the scheduler's per-thread accounting (the schedstat file of
 * each thread under /proc/<pid>/task, ns): exact for bursts far shorter than a clock tick; threads that exited are not counted. NaN when
 * the process is gone.
 */
export function schedMs(pid: number): number {
  try {
    let ns = 0;
    for (const t of readdirSync(`/proc/${pid}/task`))
      ns += Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, "utf8").split(" ")[0]);
    return ns / 1e6;
  } catch {
    return Number.NaN;
  }
}

/** Machine-wide busy CPU time in ms (all cores, /proc/stat), to see what else ran. */
export function machineBusyMs(): number {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal
  const busy = (f[0] ?? 0) + (f[1] ?? 0) + (f[2] ?? 0) + (f[5] ?? 0) + (f[6] ?? 0) + (f[7] ?? 0);
  return (busy * 1000) / CLK_TCK;
}

export type CpuSnapshot = { at: number; byPid: Map<number, number>; self: NodeJS.CpuUsage; machine: number };

export function cpuSnapshot(pids: number[]): CpuSnapshot {
  return {
    at: performance.now(),
    byPid: new Map(pids.map((p) => [p, cpuMs(p)])),
    self: process.cpuUsage(),
    machine: machineBusyMs(),
  };
}

/** CPU ms spent per pid between two snapshots, the bench process's own, the machine's, and the wall time. */
export function cpuDelta(
  a: CpuSnapshot,
  b: CpuSnapshot,
): { wall_ms: number; byPid: Map<number, number>; self_ms: number; machine_ms: number } {
  const byPid = new Map<number, number>();
  for (const [pid, v] of a.byPid) byPid.set(pid, (b.byPid.get(pid) ?? Number.NaN) - v);
  const self = (b.self.user - a.self.user + b.self.system - a.self.system) / 1000;
  return { wall_ms: b.at - a.at, byPid, self_ms: self, machine_ms: b.machine - a.machine };
}

/** A measured process as the results name it. */
type Named = { pid: number; site: string; name: string; kind: string };

/** The RSS of each process now. */
export function rssOf(procs: Named[]): ProcRss[] {
  return procs.map((p) => ({ site: p.site, name: p.name, kind: p.kind, rss_mb: rssMb(p.pid) }));
}

/** The CPU of each process over an interval (`cpuDelta`) in which `ops` ops were done. */
export function cpuOf(procs: Named[], d: ReturnType<typeof cpuDelta>, ops: number): ProcCpu[] {
  return procs.map((p) => {
    const ms = d.byPid.get(p.pid) ?? Number.NaN;
    return {
      pid: p.pid,
      site: p.site,
      name: p.name,
      kind: p.kind,
      cpu_ms: round(ms),
      us_per_op: round((ms * 1000) / ops),
      pct_core: round((ms / d.wall_ms) * 100),
    };
  });
}

/**
 * RSS of a process by mapping (/proc/<pid>/smaps, MB), read from outside so that the process does not
 * allocate for it: the brk heap (glibc's main arena), anonymous mappings by size (V8's pages are
 * 256 KB, its new space two 16 MB semi-spaces, large objects one mapping each), file-backed (the node
 * binary, libraries). Empty when the process is gone.
 */
export function mapsOf(pid: number): Record<string, number> {
  const out: Record<string, number> = { brk: 0, anon_le1m: 0, anon_1m_32m: 0, anon_gt32m: 0, file: 0 };
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/smaps`, "utf8");
  } catch {
    return {};
  }
  let cls = "file";
  for (const line of text.split("\n")) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (m) {
      const size = Number.parseInt(m[2] as string, 16) - Number.parseInt(m[1] as string, 16);
      const name = m[3] as string;
      if (name === "[heap]") cls = "brk";
      else if (name === "" || name.startsWith("[anon")) {
        cls = size <= 1_048_576 ? "anon_le1m" : size <= 32 * 1_048_576 ? "anon_1m_32m" : "anon_gt32m";
      } else cls = "file";
    } else if (line.startsWith("Rss:")) out[cls] = (out[cls] ?? 0) + Number(line.split(/\s+/)[1]) * 1024;
  }
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, Math.round((v / 1_048_576) * 10) / 10]));
}
