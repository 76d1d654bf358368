/**
 * Process helpers shared by the topology and the service launcher: spawning attached or detached
 * processes with output to a log file, pid files, liveness checks that guard against pid reuse,
 * SIGTERM-then-SIGKILL stopping, and an exit hook so no attached child outlives its parent.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `p`'s value, or undefined once `ms` passed; the timer is cleared either way, so it never keeps the process alive. */
export async function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let t: ReturnType<typeof setTimeout> | undefined;
  try {
    const timeout = new Promise<undefined>((r) => {
      t = setTimeout(() => r(undefined), ms);
    });
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(t);
  }
}

/** How a spawned process ended. */
export type ExitInfo = { code: number | null; signal: NodeJS.Signals | null; error?: string };

/** A process this module started (`child` set) or found in a pid file (`child` undefined). */
export type Proc = {
  pid: number;
  /** what its command line must contain for it to still be ours (guards against pid reuse) */
  marker: string;
  logFile?: string;
  child?: ChildProcess;
  /** set once it is known to have exited (only for processes started here) */
  exitInfo?: ExitInfo;
  exited?: Promise<ExitInfo>;
};

/** Attached children of this process: killed when it exits. */
const attached = new Set<Proc>();
let hooksInstalled = false;

/** SIGKILL every attached child (what the exit hook does); safe to call more than once. */
export function killAttachedSync(): void {
  for (const p of attached) {
    try {
      p.child?.kill("SIGKILL");
    } catch {
      /* already gone */
    }
  }
  attached.clear();
}

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.once("exit", killAttachedSync);
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    // Only take over a signal nobody else handles; then exit as a shell reports death by that
    // signal (128 + n), through process.exit so every "exit" hook (this one, temp dir removal) runs.
    if (process.listenerCount(sig) > 0) continue;
    process.once(sig, () => process.exit(128 + os.constants.signals[sig]));
  }
}

/** Options of {@link spawnLogged}. */
export type SpawnOptions = {
  cmd: string;
  args: string[];
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  logFile: string;
  /** own process group, not killed when this process exits, does not keep it alive */
  detached?: boolean;
  pidFile?: string;
  marker: string;
};

/** Spawn a process with stdout+stderr appended to `logFile`. */
export function spawnLogged(o: SpawnOptions): Proc {
  mkdirSync(path.dirname(o.logFile), { recursive: true });
  const fd = openSync(o.logFile, "a");
  let child: ChildProcess;
  try {
    child = spawn(o.cmd, o.args, {
      cwd: o.cwd,
      env: o.env ?? process.env,
      stdio: ["ignore", fd, fd],
      detached: o.detached ?? false,
    });
  } finally {
    closeSync(fd);
  }
  const proc: Proc = { pid: child.pid ?? -1, marker: o.marker, logFile: o.logFile, child };
  proc.exited = new Promise<ExitInfo>((resolve) => {
    child.once("exit", (code, signal) => {
      attached.delete(proc);
      proc.exitInfo = { code, signal };
      resolve(proc.exitInfo);
    });
    // If the binary cannot be started, "exit" never fires: settle on "error" too.
    child.once("error", (err) => {
      attached.delete(proc);
      proc.exitInfo = { code: null, signal: null, error: err.message };
      resolve(proc.exitInfo);
    });
  });
  if (o.detached) {
    child.unref();
  } else {
    // Not waited for by the event loop either: a test that forgets stop() must not hang; the exit
    // hook kills it.
    child.unref();
    attached.add(proc);
    installExitHooks();
  }
  if (o.pidFile && proc.pid > 0) writePidFile(o.pidFile, proc.pid);
  return proc;
}

/** A started process's description for messages. */
export function describeExit(p: Proc): string {
  const e = p.exitInfo;
  if (!e) return procAlive(p) ? "running" : "exited";
  if (e.error) return `could not start: ${e.error}`;
  return e.signal ? `killed by ${e.signal}` : `exited with code ${e.code}`;
}

export function writePidFile(file: string, pid: number): void {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, `${pid}\n`);
}

export function readPidFile(file: string): number | undefined {
  try {
    const n = Number(readFileSync(file, "utf8").trim());
    return Number.isSafeInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

export function removeFile(file: string): void {
  rmSync(file, { force: true });
}

/** The command line of a pid (Linux /proc), or undefined when unknown. */
function cmdline(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
  } catch {
    return undefined;
  }
}

function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // "pid (comm) S ..." — comm may contain spaces and parentheses: take what follows the last ")"
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return false;
  }
}

/**
 * Whether `pid` is alive and (where /proc can tell) still runs a command line containing `marker`.
 * A zombie counts as dead.
 */
export function isAlive(pid: number | undefined, marker?: string): boolean {
  if (!pid || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch {
    // ESRCH: gone; EPERM: exists but belongs to someone else, so it is not one we started
    return false;
  }
  if (isZombie(pid)) return false;
  if (marker && existsSync("/proc/self/cmdline")) {
    const c = cmdline(pid);
    if (c !== undefined && !c.includes(marker)) return false;
  }
  return true;
}

/** Whether a process is still running. */
export function procAlive(p: Proc): boolean {
  if (p.child) return !p.exitInfo;
  return isAlive(p.pid, p.marker);
}

function signal(p: Proc, sig: NodeJS.Signals): void {
  try {
    if (p.child) p.child.kill(sig);
    else if (isAlive(p.pid, p.marker)) process.kill(p.pid, sig);
  } catch {
    /* gone */
  }
}

async function waitGone(p: Proc, ms: number): Promise<boolean> {
  if (p.child && p.exited) {
    if (p.exitInfo) return true;
    return (await within(p.exited, ms)) !== undefined;
  }
  const t0 = Date.now();
  while (isAlive(p.pid, p.marker)) {
    if (Date.now() - t0 >= ms) return false;
    await sleep(25);
  }
  return true;
}

/** SIGTERM, then SIGKILL after `graceMs`. Resolves once the process is gone. */
export async function stopProc(p: Proc, graceMs = 5000): Promise<void> {
  if (!procAlive(p)) return;
  signal(p, "SIGTERM");
  if (await waitGone(p, graceMs)) return;
  signal(p, "SIGKILL");
  await waitGone(p, 5000);
}

/** SIGKILL and wait until it is gone. */
export async function killProc(p: Proc): Promise<void> {
  if (!procAlive(p)) return;
  signal(p, "SIGKILL");
  await waitGone(p, 5000);
}

/** The last `lines` lines of a file ("" when it cannot be read). */
export function tail(file: string | undefined, lines = 20): string {
  if (!file) return "";
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "";
  }
}

/** Ports handed out by {@link freePort} in this process: never hand out one twice. */
const handedOut = new Set<number>();

/** A free TCP port on `host`, chosen by the OS (bind port 0, read it, close). */
export async function freePort(host = "127.0.0.1"): Promise<number> {
  for (let i = 0; i < 20; i++) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = net.createServer();
      srv.once("error", reject);
      srv.listen(0, host, () => {
        const addr = srv.address();
        const p = typeof addr === "object" && addr ? addr.port : 0;
        srv.close(() => resolve(p));
      });
    });
    if (port > 0 && !handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error("could not find a free port");
}

/** Rejects when `host:port` cannot be bound (someone listens there). */
export function assertPortFree(host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", (err: NodeJS.ErrnoException) =>
      reject(new Error(`port ${host}:${port} is not free (${err.code})`)),
    );
    srv.listen(port, host, () => srv.close(() => resolve()));
  });
}

/** GET a JSON document (1 s timeout); undefined on any failure. */
export async function getJson(url: string): Promise<Record<string, unknown> | undefined> {
  const ac = new AbortController();
  const t = setTimeout(() => ac.abort(), 1000);
  try {
    const r = await fetch(url, { signal: ac.signal });
    return r.ok ? ((await r.json()) as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  } finally {
    clearTimeout(t);
  }
}

/**
 * The first of `n` consecutive free ports in 20000-31999 (below the ephemeral range), for a layout
 * with fixed offsets such as up.sh's (site i at base + step * i).
 */
export async function freePortBlock(n: number): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const base = 20000 + n * Math.floor(Math.random() * Math.floor(12000 / n));
    try {
      for (let p = base; p < base + n; p++) await assertPortFree("127.0.0.1", p);
      return base;
    } catch {
      /* try another block */
    }
  }
  throw new Error(`no block of ${n} free ports found`);
}
