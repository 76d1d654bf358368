/** The machine and the versions a bench ran on. */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { REPO_ROOT, findNatsServer } from "../../scripts/lib/topology.ts";

export type MachineInfo = {
  nproc: number;
  cpu_model: string;
  mem_gb: number;
  kernel: string;
  loadavg_start: number[];
  node: string;
  nats_server: string;
  packages: Record<string, string>;
  git: { commit: string; dirty_services: boolean };
};

function run(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return "unknown";
  }
}

function pkgVersion(name: string): string {
  try {
    const p = JSON.parse(
      readFileSync(path.join(REPO_ROOT, "node_modules", name, "package.json"), "utf8"),
    ) as {
      version: string;
    };
    return p.version;
  } catch {
    return "missing";
  }
}

export async function machineInfo(): Promise<MachineInfo> {
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  const model = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.trim() ?? os.cpus()[0]?.model ?? "unknown";
  const memKb = Number(/^MemTotal:\s+(\d+)/m.exec(readFileSync("/proc/meminfo", "utf8"))?.[1] ?? 0);
  let natsServer = "unknown";
  try {
    natsServer = run(findNatsServer(), ["--version"]);
  } catch {
    /* not found */
  }
  const pkgs = [
    "@nats-io/nats-core",
    "@nats-io/jetstream",
    "@nats-io/kv",
    "@nats-io/services",
    "@nats-io/transport-node",
    "ajv",
    "pino",
    "tsx",
    "typescript",
  ];
  const rootPkg = JSON.parse(readFileSync(path.join(REPO_ROOT, "package.json"), "utf8")) as {
    version: string;
  };
  return {
    nproc: Number(run("nproc", [])) || os.cpus().length,
    cpu_model: model,
    mem_gb: Math.round((memKb / 1024 / 1024) * 10) / 10,
    kernel: os.release(),
    loadavg_start: os.loadavg().map((x) => Math.round(x * 100) / 100),
    node: process.version,
    nats_server: natsServer,
    packages: {
      "nats-kv-syncd": rootPkg.version,
      ...Object.fromEntries(pkgs.map((p) => [p, pkgVersion(p)])),
    },
    git: {
      commit: run("git", ["-C", REPO_ROOT, "rev-parse", "--short", "HEAD"]),
      dirty_services: run("git", ["-C", REPO_ROOT, "status", "--porcelain", "--", "services"]) !== "",
    },
  };
}
