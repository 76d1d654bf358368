/**
 * Starting and stopping the four service processes of one site (or, with `agent`, one agent process
 * that runs the four, plus a process per extra instance of a kind):
 *   node services/run.mjs <kind|agent> --site <site> --nats-url <url> --bucket <buckets>
 * (run.mjs runs the compiled build when it is fresh, the TypeScript sources through tsx otherwise)
 *        [--node-id ..] [--clock hlc|lamport] [extra args]
 * with cwd = repo root, the environment passed through plus SYNCD_INSTANCE=<kind>-<n> and LOG_LEVEL,
 * stdout+stderr appended to `<logDir>/<kind>-<n>.log`, pid in `<dir>/<kind>-<n>.pid`.
 * Readiness = `$SRV.PING.syncd-<kind>` answered by as many instances of the site as were started.
 */
import { readFileSync, readdirSync } from "node:fs";
import * as path from "node:path";
import { type NatsConnection, createInbox, nuid } from "@nats-io/nats-core";
import { connect } from "@nats-io/transport-node";
import {
  CLIENT_REPLY_SITE,
  type ServiceKind,
  ServiceName,
  relayReplyPrefix,
  relaySubject,
} from "../../services/mod.ts";
import {
  type Proc,
  describeExit,
  isAlive,
  killProc,
  procAlive,
  readPidFile,
  removeFile,
  sleep,
  spawnLogged,
  stopProc,
  tail,
  within,
} from "./proc.ts";
import { REPO_ROOT } from "./topology.ts";

export type { ServiceKind };

/** What one process runs: one kind of service, or the site agent (several kinds in one process). */
export type InstanceKind = ServiceKind | "agent";

/** The service kinds, in start order. */
export const SERVICE_KINDS: readonly ServiceKind[] = ["clock", "watcher", "merger", "reconciler"];

/** Instance count per kind. */
export type Scale = Record<ServiceKind, number>;

function isKind(k: string): k is ServiceKind {
  return (SERVICE_KINDS as readonly string[]).includes(k);
}

function isInstanceKind(k: string): k is InstanceKind {
  return k === "agent" || isKind(k);
}

/**
 * `"merger=3,watcher=2,clock=2"` → `{clock: 2, watcher: 2, merger: 3, reconciler: 1}`.
 * Kinds not named get 1; 0 means "do not start". Separators: commas and/or spaces; a `syncd-` prefix
 * is accepted. Throws on an unknown kind, a repeated kind, or a count that is not an integer 0..64.
 * An object form (`{merger: 3}`) is accepted too.
 */
export function parseScale(spec?: string | Partial<Record<string, number>>): Scale {
  const scale: Scale = { clock: 1, watcher: 1, merger: 1, reconciler: 1 };
  if (spec === undefined) return scale;
  const entries: [string, string | number][] = [];
  if (typeof spec === "string") {
    for (const part of spec.split(/[\s,]+/).filter(Boolean)) {
      const m = /^([A-Za-z-]+)=(.*)$/.exec(part);
      if (!m) throw new Error(`bad scale entry ${JSON.stringify(part)} (want kind=count, e.g. merger=3)`);
      entries.push([m[1] as string, m[2] as string]);
    }
  } else {
    for (const [k, v] of Object.entries(spec)) if (v !== undefined) entries.push([k, v]);
  }
  const seen = new Set<string>();
  for (const [rawKind, rawCount] of entries) {
    const kind = rawKind.replace(/^syncd-/, "");
    if (!isKind(kind))
      throw new Error(
        `unknown service kind ${JSON.stringify(rawKind)} in scale (${SERVICE_KINDS.join(", ")})`,
      );
    if (seen.has(kind)) throw new Error(`service kind ${kind} given twice in scale`);
    seen.add(kind);
    const n =
      typeof rawCount === "number" ? rawCount : /^\d+$/.test(rawCount) ? Number(rawCount) : Number.NaN;
    if (!Number.isInteger(n) || n < 0 || n > 64)
      throw new Error(`bad count for ${kind} in scale: ${JSON.stringify(rawCount)} (want an integer 0..64)`);
    scale[kind] = n;
  }
  return scale;
}

/** `{clock: 1, ..}` → `"clock=1,watcher=1,merger=1,reconciler=1"`. */
export function formatScale(scale: Scale): string {
  return SERVICE_KINDS.map((k) => `${k}=${scale[k]}`).join(",");
}

/** How to start the services of one site. */
export type SiteServicesOptions = {
  site: string;
  /** NATS URL(s) of the site's server, comma separated */
  natsUrl: string;
  /** replicated buckets (default ["config"]) */
  buckets?: string[];
  nodeId?: string;
  clock?: "hlc" | "lamport";
  /** passed through to every service (auth, tuning) */
  extraArgs?: string[];
  /**
   * base of the services' HTTP ports (metrics, probes): instance n of a kind gets base + the kind's
   * offset (clock 0, watcher 1, merger 2, reconciler 3, as the systemd units' 9401–9404) + 10·(n−1);
   * an agent gets the base (its instance n, base + 10·(n−1)). Default: no HTTP port.
   */
  httpPortBase?: number;
  /** where pid files (and, without logDir, logs) go */
  dir: string;
  /** where logs go (default: dir) */
  logDir?: string;
  /** spawn detached (own process group, outlive this process) */
  detached?: boolean;
  /** base environment (default process.env) */
  env?: NodeJS.ProcessEnv;
  /** LOG_LEVEL of the services (default $LOG_LEVEL or "info") */
  logLevel?: string;
  /** repo root: where services/<kind>/main.ts lives */
  root?: string;
  /**
   * one process per site: instance 1 of every kind with a count ≥ 1 runs in one agent process
   * (`run.mjs agent`), instances 2.. of a kind each in a process of their own (default false)
   */
  agent?: boolean;
  /** how to reach the site for the readiness PING (default: plain connect to natsUrl) */
  connect?: () => Promise<NatsConnection>;
  /** readiness timeout in ms (default 30000) */
  readyTimeoutMs?: number;
};

/** One service process. */
export class ServiceInstance {
  proc: Proc | undefined;
  constructor(
    private readonly owner: SiteServices,
    readonly kind: InstanceKind,
    readonly n: number,
    /** what an agent runs (default: the four kinds) */
    private readonly agentKinds: readonly ServiceKind[] = SERVICE_KINDS,
  ) {}

  /** The kinds of service this process runs. */
  get kinds(): readonly ServiceKind[] {
    return this.kind === "agent" ? this.agentKinds : [this.kind];
  }

  /** `<kind>-<n>`, also the SYNCD_INSTANCE of the process */
  get name(): string {
    return `${this.kind}-${this.n}`;
  }
  get site(): string {
    return this.owner.site;
  }
  get logFile(): string {
    return path.join(this.owner.logDir, `${this.name}.log`);
  }
  get pidFile(): string {
    return path.join(this.owner.dir, `${this.name}.pid`);
  }
  /** pid of the current process (-1 when not running) */
  get pid(): number {
    return this.proc && procAlive(this.proc) ? this.proc.pid : -1;
  }
  /** what its command line contains (guards against a reused pid) */
  get marker(): string {
    return `services/run.mjs ${this.kind} --site ${this.site}`;
  }

  alive(): boolean {
    return this.proc !== undefined && procAlive(this.proc);
  }

  /** Spawn the process (does not wait for readiness). */
  spawn(): void {
    if (this.alive()) throw new Error(`${this.site}/${this.name} is already running (pid ${this.proc?.pid})`);
    this.proc = this.owner.spawnInstance(this);
  }

  /** SIGTERM, SIGKILL after 10 s (a service gives itself 8, STOP_TIMEOUT_MS). */
  async stop(): Promise<void> {
    if (this.proc) await stopProc(this.proc, 10_000);
    this.proc = undefined;
    removeFile(this.pidFile);
  }

  /** SIGKILL, for crash tests; resolves once the process is gone. */
  async kill9(): Promise<void> {
    if (this.proc) await killProc(this.proc);
    this.proc = undefined;
    removeFile(this.pidFile);
  }

  /** Stop (if running), start again, wait until the site's services answer PING again. */
  async restart(): Promise<void> {
    await this.stop();
    this.spawn();
    await this.owner.waitReady();
  }

  /** The tail of its log. */
  logTail(lines = 30): string {
    return tail(this.logFile, lines);
  }
}

/** A site's service processes. */
export class SiteServices {
  readonly site: string;
  readonly dir: string;
  readonly logDir: string;
  readonly instances: ServiceInstance[] = [];
  private readonly o: SiteServicesOptions;

  constructor(o: SiteServicesOptions) {
    this.o = o;
    this.site = o.site;
    this.dir = path.resolve(o.dir);
    this.logDir = path.resolve(o.logDir ?? o.dir);
  }

  /**
   * The instances recorded by pid files in `dir` (e.g. started detached by another process), with
   * their live pids; dead ones have no process.
   */
  static attach(o: SiteServicesOptions): SiteServices {
    const s = new SiteServices(o);
    let files: string[] = [];
    try {
      files = readdirSync(s.dir);
    } catch {
      /* no dir: nothing recorded */
    }
    for (const f of files.sort()) {
      const m = /^([a-z]+)-(\d+)\.pid$/.exec(f);
      if (!m || !isInstanceKind(m[1] as string)) continue;
      const kind = m[1] as InstanceKind;
      const pidFile = path.join(s.dir, f);
      const pid = readPidFile(pidFile);
      const inst = new ServiceInstance(
        s,
        kind,
        Number(m[2]),
        kind === "agent" ? agentKindsOf(pid) : undefined,
      );
      if (pid && isAlive(pid, inst.marker)) inst.proc = { pid, marker: inst.marker, logFile: inst.logFile };
      s.instances.push(inst);
    }
    return s;
  }

  /** The argv of an instance (after `node`); an agent that runs fewer than four kinds gets `--services`. */
  argv(kind: InstanceKind, agentKinds: readonly ServiceKind[] = SERVICE_KINDS, n = 1): string[] {
    const o = this.o;
    const http =
      o.httpPortBase === undefined
        ? []
        : [
            "--http-port",
            String(o.httpPortBase + (kind === "agent" ? 0 : SERVICE_KINDS.indexOf(kind)) + 10 * (n - 1)),
          ];
    return [
      "services/run.mjs",
      kind,
      "--site",
      this.site,
      "--nats-url",
      o.natsUrl,
      "--bucket",
      (o.buckets ?? ["config"]).join(","),
      ...(o.nodeId ? ["--node-id", o.nodeId] : []),
      ...(o.clock ? ["--clock", o.clock] : []),
      // after `<kind> --site <site>`: the marker that tells the process from a reused pid
      ...(kind === "agent" && agentKinds.length < SERVICE_KINDS.length
        ? ["--services", agentKinds.join(",")]
        : []),
      ...(o.extraArgs ?? []),
      ...http,
    ];
  }

  /** @internal used by ServiceInstance.spawn */
  spawnInstance(inst: ServiceInstance): Proc {
    const env: NodeJS.ProcessEnv = {
      ...(this.o.env ?? process.env),
      SYNCD_INSTANCE: inst.name,
      LOG_LEVEL: this.o.logLevel ?? this.o.env?.LOG_LEVEL ?? process.env.LOG_LEVEL ?? "info",
    };
    // A service is not a test: do not let it think it runs under node:test.
    env.NODE_TEST_CONTEXT = undefined;
    for (const k of Object.keys(env)) if (env[k] === undefined) delete env[k];
    return spawnLogged({
      cmd: process.execPath,
      args: this.argv(inst.kind, inst.kinds, inst.n),
      cwd: this.o.root ?? REPO_ROOT,
      env,
      logFile: inst.logFile,
      pidFile: inst.pidFile,
      detached: this.o.detached ?? false,
      marker: inst.marker,
    });
  }

  /**
   * Start the instances of `scale` that are not running yet (instance numbers 1..count per kind),
   * then wait until they answer PING. Returns the instances started.
   */
  async start(scale: Scale | string = parseScale()): Promise<ServiceInstance[]> {
    const sc = typeof scale === "string" ? parseScale(scale) : scale;
    const started: ServiceInstance[] = [];
    const inAgent = this.o.agent ? SERVICE_KINDS.filter((k) => sc[k] >= 1) : [];
    if (inAgent.length > 0) {
      let inst = this.instances.find((i) => i.kind === "agent" && i.n === 1);
      if (!inst?.alive()) {
        // a stopped agent started again with other kinds runs those
        if (inst && inst.kinds.join() !== inAgent.join()) {
          this.instances.splice(this.instances.indexOf(inst), 1);
          inst = undefined;
        }
        if (!inst) {
          inst = new ServiceInstance(this, "agent", 1, inAgent);
          this.instances.push(inst);
        }
        inst.spawn();
        started.push(inst);
      }
    }
    for (const kind of SERVICE_KINDS) {
      for (let n = inAgent.includes(kind) ? 2 : 1; n <= sc[kind]; n++) {
        let inst = this.instances.find((i) => i.kind === kind && i.n === n);
        if (inst?.alive()) continue;
        if (!inst) {
          inst = new ServiceInstance(this, kind, n);
          this.instances.push(inst);
        }
        inst.spawn();
        started.push(inst);
      }
    }
    try {
      await this.waitReady();
    } catch (err) {
      // Leave nothing half-started behind (also in detached mode: the caller reports the failure).
      await Promise.all(started.map((i) => i.stop()));
      throw err;
    }
    return started;
  }

  /** Instances that should be running: started here or found alive, not stopped or killed since. */
  running(): ServiceInstance[] {
    return this.instances.filter((i) => i.proc !== undefined);
  }

  /** The log tails of every instance, labelled. */
  logs(lines = 30): string {
    return this.instances
      .map(
        (i) =>
          `--- ${this.site}/${i.name} (${i.alive() ? `pid ${i.pid}` : "not running"}) ${i.logFile}\n${i.logTail(lines)}`,
      )
      .join("\n");
  }

  private async connectForPing(): Promise<NatsConnection> {
    if (this.o.connect) return this.o.connect();
    return connect({ servers: this.o.natsUrl.split(","), name: `syncd-launcher-${this.site}` });
  }

  /**
   * Wait until every running instance answers `$SRV.INFO.syncd-<kind>` with its endpoints, i.e. is
   * wired (counted by `metadata.site`,
   * and by `metadata.instance` when the services report it). Throws with the log tail of an instance
   * whose process exited, or on timeout.
   */
  async waitReady(timeoutMs = this.o.readyTimeoutMs ?? 30000): Promise<void> {
    const want = this.running();
    if (want.length === 0) return;
    const nc = await this.connectForPing();
    const t0 = Date.now();
    let missing: string[] = [];
    try {
      for (;;) {
        for (const i of want) {
          if (i.proc && !procAlive(i.proc)) {
            throw new Error(
              `service ${this.site}/${i.name} ${describeExit(i.proc)} while starting; log tail (${i.logFile}):\n${i.logTail(25)}`,
            );
          }
        }
        const found = await pingSite(nc, this.site, 300, (a) => missingOf(want, a).length === 0, false, true);
        missing = missingOf(want, found);
        if (missing.length === 0) return;
        if (Date.now() - t0 > timeoutMs) {
          throw new Error(
            `services of site ${this.site} not ready within ${timeoutMs} ms; no PING answer from ${missing.join(", ")}\n${this.logs(10)}`,
          );
        }
        await sleep(100);
      }
    } finally {
      await nc.close().catch(() => {});
    }
  }

  /** Stop every instance (SIGTERM, SIGKILL after 5 s), in parallel. */
  async stop(): Promise<void> {
    await Promise.all(this.instances.map((i) => i.stop()));
  }
}

/** The kinds a running agent was started with (its `--services`), all four when not known. */
function agentKindsOf(pid: number | undefined): readonly ServiceKind[] {
  if (!pid) return SERVICE_KINDS;
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    const i = argv.indexOf("--services");
    const kinds = i >= 0 ? (argv[i + 1] ?? "").split(",").filter(isKind) : [];
    return kinds.length > 0 ? kinds : SERVICE_KINDS;
  } catch {
    return SERVICE_KINDS;
  }
}

/** The names of the instances in `want` without a PING answer (by metadata.instance, else counted). */
function missingOf(want: ServiceInstance[], found: PingAnswer[]): string[] {
  const missing: string[] = [];
  for (const kind of SERVICE_KINDS) {
    const mine = want.filter((i) => i.kinds.includes(kind));
    if (mine.length === 0) continue;
    const answers = found.filter((f) => f.kind === kind);
    const names = new Set(answers.map((a) => a.instance));
    const byName = mine.filter((i) => !names.has(i.name));
    // Services that do not report `instance` are counted instead.
    const unnamed = answers.filter((a) => a.instance === undefined).length;
    if (byName.length > unnamed) missing.push(...byName.slice(unnamed).map((i) => i.name));
  }
  return missing;
}

/** One `$SRV.PING` answer. */
export type PingAnswer = {
  kind: ServiceKind;
  name: string;
  id: string;
  site?: string;
  instance?: string;
  metadata: Record<string, string>;
};

/**
 * Every syncd service instance that answers `$SRV.PING.syncd-<kind>` within `waitMs`, optionally only
 * those whose `metadata.site` is `site`. `relay`: also ask through the hub relay, so that a
 * connection at one site hears every site's instances when the hub isolates leaf interest.
 * `wired`: ask `$SRV.INFO` instead and count only instances that list their endpoints (a service
 * answers PING from its start, before its wiring has added the endpoints).
 */
export async function pingSite(
  nc: NatsConnection,
  site: string | undefined,
  waitMs = 300,
  /** stop collecting early once this holds for the answers so far */
  enough?: (answers: PingAnswer[]) => boolean,
  relay = false,
  wired = false,
): Promise<PingAnswer[]> {
  const out: PingAnswer[] = [];
  const reply = relay ? `${relayReplyPrefix(CLIENT_REPLY_SITE, nuid.next())}.ping` : createInbox();
  let wake: (() => void) | undefined;
  const done = new Promise<void>((r) => {
    wake = r;
  });
  const sub = nc.subscribe(reply, {
    callback: (err, m) => {
      if (err) return;
      try {
        const r = m.json<{
          name?: string;
          id?: string;
          metadata?: Record<string, string>;
          endpoints?: unknown[];
        }>();
        const kind = (r.name ?? "").replace(/^syncd-/, "");
        if (!isKind(kind) || !r.id) return;
        if (wired && !r.endpoints?.length) return;
        const md = r.metadata ?? {};
        if (site !== undefined && md.site !== site) return;
        out.push({
          kind,
          name: r.name as string,
          id: r.id,
          site: md.site,
          instance: md.instance,
          metadata: md,
        });
        if (enough?.(out)) wake?.();
      } catch {
        /* not JSON: ignore */
      }
    },
  });
  try {
    await nc.flush();
    for (const kind of SERVICE_KINDS) {
      const subject = `$SRV.${wired ? "INFO" : "PING"}.${ServiceName[kind]}`;
      nc.publish(subject, "", { reply });
      if (relay) nc.publish(relaySubject(subject), "", { reply });
    }
    await nc.flush();
    await within(done, waitMs);
  } finally {
    sub.unsubscribe();
  }
  // one answer per service id
  return [...new Map(out.map((a) => [a.id, a])).values()];
}
