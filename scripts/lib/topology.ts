/**
 * The NATS topology of a mesh: a hub (no JetStream) plus N sites, each `site-<x>` a nats-server with
 * JetStream domain `<x>` and a leaf remote to the hub. A TypeScript port of
 * /work/shared/reference/topology/start-topology.mjs (measured against nats-server 2.9.10), with:
 * - configs rendered from deploy/nats/hub.conf and deploy/nats/site.conf.template (the site's leaf
 *   remote denies the exact subject `rep.kv.ops` both ways: hand-made ops stay in their site);
 * - explicit ports, or ports the server chooses (`-1`) read back from it after its first start
 *   (`ports_file_dir`'s `<exe>_<pid>.ports`, the hub's leaf port from `/varz`), kept for restarts;
 * - a detached mode (own process group, pid files, outlives the launcher) for ./scripts/up.sh, and
 *   `Topology.attach(state)` to drive such a mesh from another process;
 * - stop/start of the hub and of one site's server (partition and outage rehearsal), addSite;
 * - the secured variant (`secure`): deploy/nats/hub-secure.conf.template and
 *   site-secure.conf.template, TLS on every client port and mutual TLS + a password on the leaf
 *   connections (certificates from scripts/gen-certs.sh), site users from `siteInclude`.
 *
 * Layout of the working dir: `hub/{hub.conf,hub.log,hub.pid}`,
 * `site-<x>/{server.conf,server.log,server.pid,store/}` (logs elsewhere with the `logDir` option).
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  constants,
  accessSync,
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import type { NatsConnection } from "@nats-io/nats-core";
import { connect } from "@nats-io/transport-node";
import { RELAY_REPLY_PREFIX, relaySubject } from "../../services/mod.ts";
import {
  type Proc,
  describeExit,
  freePort,
  getJson,
  isAlive,
  killProc,
  procAlive,
  readPidFile,
  removeFile,
  sleep,
  spawnLogged,
  stopProc,
  tail,
} from "./proc.ts";

/** The repository root (scripts/lib/../..). */
export const REPO_ROOT: string = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/**
 * The local mesh's folder (mesh.json, pid files, logs): $MESH_DIR, relative to where the user ran the
 * script (SYNCD_CALLER_CWD, passed by the shell wrappers), else <repo>/.mesh.
 */
export function meshDir(env: NodeJS.ProcessEnv = process.env): string {
  const callerCwd = env.SYNCD_CALLER_CWD || process.cwd();
  return env.MESH_DIR ? path.resolve(callerCwd, env.MESH_DIR) : path.join(REPO_ROOT, ".mesh");
}
export const HUB_CONF_FILE: string = path.join(REPO_ROOT, "deploy/nats/hub.conf");
export const SITE_CONF_TEMPLATE: string = path.join(REPO_ROOT, "deploy/nats/site.conf.template");
export const SITE_USERS_TEMPLATE: string = path.join(REPO_ROOT, "deploy/nats/site-users.conf.template");
export const HUB_SECURE_TEMPLATE: string = path.join(REPO_ROOT, "deploy/nats/hub-secure.conf.template");
export const SITE_SECURE_TEMPLATE: string = path.join(REPO_ROOT, "deploy/nats/site-secure.conf.template");
export const GEN_CERTS_SCRIPT: string = path.join(REPO_ROOT, "scripts/gen-certs.sh");

/** The addresses deploy/nats/hub.conf is written with; rendering replaces exactly these. */
const HUB_CONF_DEFAULTS = {
  client: "127.0.0.1:7222",
  http: "127.0.0.1:7223",
  leaf: "127.0.0.1:7422",
  store: '"/var/lib/nats/hub"',
};

const SITE_NAME = /^[A-Za-z0-9_-]+$/;

/** One nats-server of the topology, as recorded in the mesh state (JSON-serialisable). */
export type ServerState = {
  /** server_name: "hub" or "site-<x>" */
  name: string;
  host: string;
  clientPort: number;
  httpPort: number;
  url: string;
  httpUrl: string;
  dir: string;
  confFile: string;
  logFile: string;
  pidFile: string;
  /** pid of the running server; undefined while stopped */
  pid?: number;
};
export type HubState = ServerState & {
  leafPort: number;
  leafUrl: string;
  /** the hub isolates leaf interest (`isolate_leafnode_interest`): sites reach each other through the relay */
  isolate?: boolean;
};
export type SiteState = ServerState & { site: string; domain: string; storeDir: string };
export type TopologyState = { dir: string; host: string; hub: HubState; sites: Record<string, SiteState> };

export type PortSpec = { client?: number; http?: number };

/**
 * The local mesh's site ports (up.sh): site i's client port at `base + step·slot`, its monitoring
 * port one above, slots whose ports meet one of `taken` (the hub's) skipped — with the defaults the
 * fourth site goes to 8222, not onto the hub's 7222. When `shrink` (no step was asked for) and the
 * sites do not fit below 65535 in steps of `step`, steps of 10. Undefined when they do not fit.
 */
export function planSitePorts(
  n: number,
  base: number,
  step: number,
  taken: number[],
  shrink: boolean,
): { client: number; http: number }[] | undefined {
  const hub = new Set(taken);
  const layout = (st: number) => {
    const out: { client: number; http: number }[] = [];
    for (let slot = 0; out.length < n; slot++) {
      const client = base + st * slot;
      if (client + 1 > 65535) return undefined;
      if (!hub.has(client) && !hub.has(client + 1)) out.push({ client, http: client + 1 });
    }
    return out;
  };
  return layout(step) ?? (shrink && step > 10 ? layout(10) : undefined);
}

/**
 * The secured variant of the mesh (deploy/nats/hub-secure.conf.template, site-secure.conf.template):
 * TLS on every client port, mutual TLS on the leaf connections, the hub's client port for `admin`
 * only, its leaf listener for user `leaf` only. The sites' users come from `siteInclude` (required).
 */
export type SecureOptions = {
  /** folder with ca.pem, server(-key).pem, client(-key).pem (see {@link ensureCerts}) */
  certDir: string;
  /** password of `admin` on the hub's client port */
  adminPassword: string;
  /** password of `leaf`, the user the sites' leaf remotes log in as at the hub */
  leafPassword: string;
};

/** The files scripts/gen-certs.sh writes. */
export type CertFiles = {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
};

/** The certificate files in `dir` (as scripts/gen-certs.sh names them). */
export function certFiles(dir: string): CertFiles {
  const d = path.resolve(dir);
  return {
    dir: d,
    ca: path.join(d, "ca.pem"),
    serverCert: path.join(d, "server.pem"),
    serverKey: path.join(d, "server-key.pem"),
    clientCert: path.join(d, "client.pem"),
    clientKey: path.join(d, "client-key.pem"),
  };
}

/** Run scripts/gen-certs.sh for `dir` (keeps existing certificates); returns the file names. */
export function ensureCerts(dir: string): CertFiles {
  const files = certFiles(dir);
  try {
    execFileSync(GEN_CERTS_SCRIPT, [files.dir], { stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`scripts/gen-certs.sh ${files.dir} failed: ${e.stderr?.trim() || e.message}`);
  }
  return files;
}

/** A random password (hex, safe in URLs and config strings). */
export function randomPassword(bytes = 18): string {
  return randomBytes(bytes).toString("hex");
}

export type TopologyOptions = {
  /** site names; each becomes server `site-<name>` with JetStream domain `<name>` (default a, b) */
  sites?: string[];
  /** working dir; default: a fresh temp dir, removed by stop() unless keepDir */
  dir?: string;
  keepDir?: boolean;
  host?: string;
  /** hub ports; a missing one is chosen by the server */
  hubPorts?: { client?: number; http?: number; leaf?: number };
  /** ports of a site (index = position in `sites`, then order of addSite); missing → chosen by the server */
  sitePorts?: (site: string, index: number) => PortSpec | undefined;
  /** server logs go to `<logDir>/hub.log` and `<logDir>/site-<x>/server.log` (default: in each server's dir) */
  logDir?: string;
  /** spawn servers detached (own process group, outlive this process); default false */
  detached?: boolean;
  /** nats-server binary; default $NATS_SERVER, nats-server on PATH, /usr/sbin/nats-server */
  natsServer?: string;
  /** max wait for servers / leaf connections / the probe, ms (default 20000) */
  timeoutMs?: number;
  /** also check request/reply between every pair of sites (default true) */
  probe?: boolean;
  /** extra config of a site, written to `site-<x>/users.conf` and included by its server.conf */
  siteInclude?: (site: string) => string | undefined;
  /** credentials of the probe connections (when the sites require auth) */
  auth?: { user: string; pass: string };
  /**
   * the hub isolates leaf interest (nats-server 2.12+; README "What the mesh is"): true, false, or
   * "auto" (when the server supports it). Default: $SYNCD_HUB_ISOLATE (1, 0 or auto), else "auto".
   */
  isolate?: boolean | "auto";
  /** the secured variant (TLS, hub auth); needs `siteInclude` (the site users) and `auth` */
  secure?: SecureOptions;
};

/** `$NATS_SERVER`, else `nats-server` on PATH, else /usr/sbin/nats-server (throws if none). */
export function findNatsServer(env: NodeJS.ProcessEnv = process.env): string {
  if (env.NATS_SERVER) return env.NATS_SERVER;
  const dirs = [...(env.PATH ?? "").split(path.delimiter).filter(Boolean), "/usr/sbin", "/usr/local/bin"];
  for (const d of dirs) {
    const p = path.join(d, "nats-server");
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  throw new Error(
    "nats-server not found (set NATS_SERVER, put it on PATH, or run ./scripts/ensure-deps.sh to install it)",
  );
}

/** What a site's server config is made from. */
export type SiteConfValues = {
  site: string;
  host: string;
  clientPort: number;
  httpPort: number;
  storeDir: string;
  hubLeafUrl: string;
};

/** The placeholders both site templates share. */
function siteFields(o: SiteConfValues): Record<string, string> {
  return {
    SITE: o.site,
    HOST: o.host,
    CLIENT_PORT: String(o.clientPort),
    HTTP_PORT: String(o.httpPort),
    STORE_DIR: o.storeDir,
  };
}

function fill(file: string, values: Record<string, string>): string {
  return readFileSync(file, "utf8").replace(/\{\{([A-Z_]+)\}\}/g, (m, k: string) => {
    const v = values[k];
    if (v === undefined) throw new Error(`${file}: unknown placeholder ${m}`);
    return v;
  });
}

/**
 * deploy/nats/site-users.conf.template with its placeholders filled. Without `readerPassword` the
 * reader gets a random one nobody knows.
 */
export function renderSiteUsersConf(o: {
  site: string;
  syncdPassword: string;
  appPassword: string;
  adminPassword: string;
  readerPassword?: string;
}): string {
  return fill(SITE_USERS_TEMPLATE, {
    SITE: o.site,
    SYNCD_PASSWORD: o.syncdPassword,
    APP_PASSWORD: o.appPassword,
    READER_PASSWORD: o.readerPassword ?? randomPassword(),
    ADMIN_PASSWORD: o.adminPassword,
  });
}

/** deploy/nats/hub-secure.conf.template with its placeholders filled. */
export function renderSecureHubConf(o: {
  host: string;
  clientPort: number;
  httpPort: number;
  leafPort: number;
  certDir: string;
  adminPassword: string;
  leafPassword: string;
  storeDir: string;
  isolate?: boolean;
}): string {
  const t = fill(HUB_SECURE_TEMPLATE, {
    STORE_DIR: o.storeDir,
    HOST: o.host,
    CLIENT_PORT: String(o.clientPort),
    HTTP_PORT: String(o.httpPort),
    LEAF_PORT: String(o.leafPort),
    CERT_DIR: path.resolve(o.certDir),
    ADMIN_PASSWORD: o.adminPassword,
    LEAF_PASSWORD: o.leafPassword,
  });
  return withIsolation(t, o.isolate ?? false, HUB_SECURE_TEMPLATE);
}

/**
 * deploy/nats/site-secure.conf.template with its placeholders filled; `hubLeafUrl` without user
 * info (nats-leaf://host:port): the leaf user and password are put in here.
 */
export function renderSecureSiteConf(o: SiteConfValues & { certDir: string; leafPassword: string }): string {
  const u = new URL(o.hubLeafUrl);
  u.username = "leaf";
  u.password = o.leafPassword;
  return fill(SITE_SECURE_TEMPLATE, {
    ...siteFields(o),
    CERT_DIR: path.resolve(o.certDir),
    HUB_LEAF_URL: u.toString().replace(/\/$/, ""),
  });
}

function replaceOnce(text: string, from: string, to: string, file: string): string {
  const parts = text.split(from);
  if (parts.length !== 2)
    throw new Error(`${file}: expected "${from}" exactly once, found ${parts.length - 1}`);
  return parts.join(to);
}

/** The version of a nats-server binary (`nats-server --version`), e.g. [2, 15, 2]. */
export function natsServerVersion(natsServer: string): [number, number, number] {
  const out = execFileSync(natsServer, ["--version"], { encoding: "utf8" });
  const m = /v?(\d+)\.(\d+)\.(\d+)/.exec(out);
  if (!m) throw new Error(`${natsServer} --version: no version in ${JSON.stringify(out.trim())}`);
  return [Number(m[1]), Number(m[2]), Number(m[3])];
}

/** True when the server isolates leaf interest on request (`isolate_leafnode_interest`: 2.12+). */
export function supportsLeafIsolation(natsServer: string): boolean {
  const [major, minor] = natsServerVersion(natsServer);
  return major > 2 || (major === 2 && minor >= 12);
}

/** Resolve the `isolate` option (or $SYNCD_HUB_ISOLATE) for a server binary. */
export function resolveIsolate(
  natsServer: string,
  opt: boolean | "auto" | undefined,
  env: NodeJS.ProcessEnv = process.env,
): boolean {
  const v = opt ?? envIsolate(env.SYNCD_HUB_ISOLATE);
  if (v === "auto") return supportsLeafIsolation(natsServer);
  if (v && !supportsLeafIsolation(natsServer))
    throw new Error(`${natsServer} cannot isolate leaf interest (needs nats-server 2.12+)`);
  return v;
}

function envIsolate(raw: string | undefined): boolean | "auto" {
  if (raw === undefined || raw === "" || raw === "auto") return "auto";
  if (raw === "0" || raw === "false") return false;
  if (raw === "1" || raw === "true") return true;
  throw new Error(`SYNCD_HUB_ISOLATE must be 1, 0 or auto, got ${JSON.stringify(raw)}`);
}

/** The line of the hub configs that isolates leaf interest (on as shipped), commented out not to isolate. */
const ISOLATE_LINE = /^([ \t]*)(?:# )?(isolate_leafnode_interest: true)\b(.*)$/m;

/** A hub config with its isolation line on, or commented out (a 2.9-2.11 hub refuses the field). */
function withIsolation(conf: string, isolate: boolean, file: string): string {
  if (!ISOLATE_LINE.test(conf)) throw new Error(`${file}: no "isolate_leafnode_interest: true" line`);
  return conf.replace(ISOLATE_LINE, isolate ? "$1$2$3" : "$1# $2$3");
}

/** deploy/nats/hub.conf with the given address and ports (and isolation, default off). */
export function renderHubConf(o: {
  host: string;
  clientPort: number;
  httpPort: number;
  leafPort: number;
  storeDir: string;
  isolate?: boolean;
}): string {
  let t = withIsolation(readFileSync(HUB_CONF_FILE, "utf8"), o.isolate ?? false, HUB_CONF_FILE);
  t = replaceOnce(t, HUB_CONF_DEFAULTS.store, JSON.stringify(o.storeDir), HUB_CONF_FILE);
  t = replaceOnce(t, HUB_CONF_DEFAULTS.client, `${o.host}:${o.clientPort}`, HUB_CONF_FILE);
  t = replaceOnce(t, HUB_CONF_DEFAULTS.http, `${o.host}:${o.httpPort}`, HUB_CONF_FILE);
  t = replaceOnce(t, HUB_CONF_DEFAULTS.leaf, `${o.host}:${o.leafPort}`, HUB_CONF_FILE);
  return t;
}

/** deploy/nats/site.conf.template with its placeholders filled. */
export function renderSiteConf(o: SiteConfValues): string {
  return fill(SITE_CONF_TEMPLATE, { ...siteFields(o), HUB_LEAF_URL: o.hubLeafUrl });
}

type Server = {
  state: HubState | SiteState;
  kind: "hub" | "site";
  proc?: Proc;
  startedOnce: boolean;
};

/** A port left to the OS: the server binds any free port, read back once it listens. */
const ANY_PORT = -1;

/** Where a server started with `ports_file_dir: dir` writes the ports it listens on. */
function portsFile(dir: string, natsServer: string, pid: number): string {
  return path.join(dir, `${path.basename(natsServer)}_${pid}.ports`);
}

/** The client and monitoring ports of a ports file, or undefined while it is not (fully) written. */
function readPortsFile(file: string): { client: number; http: number } | undefined {
  try {
    const f = JSON.parse(readFileSync(file, "utf8")) as { nats?: string[]; monitoring?: string[] };
    const [client, http] = [f.nats?.[0], f.monitoring?.[0]].map((u) => (u ? Number(new URL(u).port) : 0));
    return client && http ? { client, http } : undefined;
  } catch {
    return undefined;
  }
}

/** A running (or partly stopped) hub + sites topology. */
/** A source heard from within this (it sends a heartbeat a second) has resumed. */
const SOURCE_HEARD_NS = 3e9;
/** How long `waitSourcesResumed` waits by default: beyond nats-server's longest back-off (2 min). */
export const SOURCES_RESUME_LIMIT_MS = 150_000;

/** The part of a server's `/jsz?accounts=true&streams=true&config=true` read here. */
type Jsz = {
  config?: { domain?: string };
  account_details?: {
    stream_detail?: {
      name: string;
      sources?: {
        name: string;
        active: number;
        external?: { api?: string };
        error?: { description?: string };
      }[];
    }[];
  }[];
};

export class Topology {
  readonly dir: string;
  readonly host: string;
  readonly natsServer: string;
  readonly detached: boolean;
  readonly timeoutMs: number;
  readonly probe: boolean;
  private readonly ownDir: boolean;
  private readonly keepDir: boolean;
  private readonly sitePorts: TopologyOptions["sitePorts"];
  private readonly logDir: string | undefined;
  private readonly siteInclude: TopologyOptions["siteInclude"];
  private readonly auth: TopologyOptions["auth"];
  private readonly secure: SecureOptions | undefined;
  private readonly hubServer: Server;
  private readonly siteServers = new Map<string, Server>();

  private constructor(o: {
    dir: string;
    ownDir: boolean;
    keepDir: boolean;
    host: string;
    natsServer: string;
    detached: boolean;
    timeoutMs: number;
    probe: boolean;
    sitePorts: TopologyOptions["sitePorts"];
    logDir: string | undefined;
    siteInclude?: TopologyOptions["siteInclude"];
    auth?: TopologyOptions["auth"];
    secure?: SecureOptions;
    hub: Server;
  }) {
    if (o.secure && (!o.siteInclude || !o.auth))
      throw new Error("a secure topology needs siteInclude (the site users) and auth (the probe's user)");
    this.secure = o.secure;
    this.logDir = o.logDir;
    this.siteInclude = o.siteInclude;
    this.auth = o.auth;
    this.dir = o.dir;
    this.ownDir = o.ownDir;
    this.keepDir = o.keepDir;
    this.host = o.host;
    this.natsServer = o.natsServer;
    this.detached = o.detached;
    this.timeoutMs = o.timeoutMs;
    this.probe = o.probe;
    this.sitePorts = o.sitePorts;
    this.hubServer = o.hub;
  }

  /** Start the hub, then the sites; resolves when every leaf connection is up (and the probe passed). */
  static async start(opts: TopologyOptions = {}): Promise<Topology> {
    const host = opts.host ?? "127.0.0.1";
    const ownDir = !opts.dir;
    const dir = opts.dir ? path.resolve(opts.dir) : mkdtempSync(path.join(os.tmpdir(), "syncd-mesh-"));
    mkdirSync(dir, { recursive: true });
    const hp = opts.hubPorts ?? {};
    const clientPort = hp.client ?? ANY_PORT;
    const httpPort = hp.http ?? ANY_PORT;
    const leafPort = hp.leaf ?? ANY_PORT;
    const hubDir = path.join(dir, "hub");
    const natsServer = opts.natsServer ?? findNatsServer();
    const isolate = resolveIsolate(natsServer, opts.isolate);
    const hub: Server = {
      kind: "hub",
      startedOnce: false,
      state: {
        name: "hub",
        host,
        clientPort,
        httpPort,
        leafPort,
        ...(isolate ? { isolate } : {}),
        url: `nats://${host}:${clientPort}`,
        httpUrl: `http://${host}:${httpPort}`,
        leafUrl: `nats-leaf://${host}:${leafPort}`,
        dir: hubDir,
        confFile: path.join(hubDir, "hub.conf"),
        logFile: opts.logDir ? path.join(path.resolve(opts.logDir), "hub.log") : path.join(hubDir, "hub.log"),
        pidFile: path.join(hubDir, "hub.pid"),
      },
    };
    const topo = new Topology({
      dir,
      ownDir,
      keepDir: opts.keepDir ?? false,
      host,
      natsServer,
      detached: opts.detached ?? false,
      timeoutMs: opts.timeoutMs ?? 20000,
      probe: opts.probe ?? true,
      sitePorts: opts.sitePorts,
      logDir: opts.logDir ? path.resolve(opts.logDir) : undefined,
      siteInclude: opts.siteInclude,
      auth: opts.auth,
      ...(opts.secure ? { secure: opts.secure } : {}),
      hub,
    });
    try {
      for (const s of opts.sites ?? ["a", "b"]) await topo.defineSite(s);
      // The hub first, healthy, so the sites' first leaf connect succeeds (a failed attempt costs
      // one reconnect interval).
      await topo.spawn(hub);
      await topo.waitHealthy(hub);
      for (const s of topo.siteServers.values()) await topo.spawn(s);
      await topo.waitReady();
    } catch (err) {
      await topo.stop().catch(() => {});
      throw err;
    }
    return topo;
  }

  /**
   * Drive a topology started elsewhere (e.g. detached by ./scripts/up.sh) from its recorded state.
   * Servers started through it are detached too.
   */
  static attach(
    state: TopologyState,
    opts: {
      natsServer?: string;
      timeoutMs?: number;
      probe?: boolean;
      /** as given to start(): a server (re)started through the attached topology gets the same config */
      siteInclude?: TopologyOptions["siteInclude"];
      auth?: TopologyOptions["auth"];
      secure?: SecureOptions;
    } = {},
  ): Topology {
    const hub: Server = { kind: "hub", state: { ...state.hub }, startedOnce: true };
    const topo = new Topology({
      dir: state.dir,
      ownDir: false,
      keepDir: true,
      host: state.host,
      natsServer: opts.natsServer ?? findNatsServer(),
      detached: true,
      timeoutMs: opts.timeoutMs ?? 20000,
      probe: opts.probe ?? true,
      sitePorts: undefined,
      logDir: undefined,
      siteInclude: opts.siteInclude,
      auth: opts.auth,
      ...(opts.secure ? { secure: opts.secure } : {}),
      hub,
    });
    topo.adopt(hub);
    for (const [name, s] of Object.entries(state.sites)) {
      const srv: Server = { kind: "site", state: { ...s }, startedOnce: true };
      topo.adopt(srv);
      topo.siteServers.set(name, srv);
    }
    return topo;
  }

  /** A recorded server whose pid is alive becomes a Proc again (no child handle). */
  private adopt(s: Server): void {
    const pid = s.state.pid ?? readPidFile(s.state.pidFile);
    if (pid && isAlive(pid, s.state.confFile)) {
      s.proc = { pid, marker: s.state.confFile, logFile: s.state.logFile };
      s.state.pid = pid;
    } else {
      s.state.pid = undefined;
    }
  }

  get hub(): HubState {
    return this.hubServer.state as HubState;
  }

  get sites(): Record<string, SiteState> {
    return Object.fromEntries([...this.siteServers].map(([k, s]) => [k, s.state as SiteState]));
  }

  site(name: string): SiteState {
    return this.server(name).state as SiteState;
  }

  private server(site: string): Server {
    const s = this.siteServers.get(site);
    if (!s) throw new Error(`unknown site ${JSON.stringify(site)}`);
    return s;
  }

  /** Everything needed to attach() later (JSON-serialisable). */
  state(): TopologyState {
    return { dir: this.dir, host: this.host, hub: { ...this.hub }, sites: structuredClone(this.sites) };
  }

  hubRunning(): boolean {
    return this.running(this.hubServer);
  }

  serverRunning(site: string): boolean {
    return this.running(this.server(site));
  }

  private running(s: Server): boolean {
    return s.proc !== undefined && procAlive(s.proc);
  }

  private async defineSite(site: string, ports?: PortSpec): Promise<Server> {
    // The name is the JetStream domain and a subject token: keep it simple.
    if (!SITE_NAME.test(site)) throw new Error(`invalid site name ${JSON.stringify(site)}`);
    if (this.siteServers.has(site)) throw new Error(`site ${site} already exists`);
    const p = ports ?? this.sitePorts?.(site, this.siteServers.size) ?? {};
    const clientPort = p.client ?? ANY_PORT;
    const httpPort = p.http ?? ANY_PORT;
    const dir = path.join(this.dir, `site-${site}`);
    const srv: Server = {
      kind: "site",
      startedOnce: false,
      state: {
        name: `site-${site}`,
        site,
        domain: site,
        host: this.host,
        clientPort,
        httpPort,
        url: `nats://${this.host}:${clientPort}`,
        httpUrl: `http://${this.host}:${httpPort}`,
        dir,
        confFile: path.join(dir, "server.conf"),
        logFile: path.join(this.logDir ? path.join(this.logDir, `site-${site}`) : dir, "server.log"),
        pidFile: path.join(dir, "server.pid"),
        storeDir: path.join(dir, "store"),
      },
    };
    this.siteServers.set(site, srv);
    return srv;
  }

  private setPort(s: Server, k: "client" | "http" | "leaf", port: number): void {
    const st = s.state;
    if (k === "client") {
      st.clientPort = port;
      st.url = `nats://${st.host}:${port}`;
    } else if (k === "http") {
      st.httpPort = port;
      st.httpUrl = `http://${st.host}:${port}`;
    } else {
      const h = st as HubState;
      h.leafPort = port;
      h.leafUrl = `nats-leaf://${st.host}:${port}`;
    }
  }

  private portOf(s: Server, k: "client" | "http" | "leaf"): number {
    return k === "client"
      ? s.state.clientPort
      : k === "http"
        ? s.state.httpPort
        : (s.state as HubState).leafPort;
  }

  /** The TLS options of a client connection to this topology's servers (secure variant only). */
  clientTls(): { caFile: string } | undefined {
    return this.secure ? { caFile: certFiles(this.secure.certDir).ca } : undefined;
  }

  /** Writes a server config; in the secure variant (passwords inside) readable by the owner only. */
  private writeFile(file: string, text: string): void {
    writeFileSync(file, text, this.secure ? { mode: 0o600 } : {});
    if (this.secure) chmodSync(file, 0o600);
  }

  private writeConf(s: Server): void {
    mkdirSync(s.state.dir, { recursive: true });
    const sec = this.secure;
    const { host, clientPort, httpPort } = s.state;
    // the ports left to the server (-1) are read back from the file it writes there
    const portsFileDir = `\nports_file_dir: ${JSON.stringify(s.state.dir)}\n`;
    if (s.kind === "hub") {
      const h = s.state as HubState;
      const o = {
        host,
        clientPort,
        httpPort,
        leafPort: h.leafPort,
        storeDir: path.join(h.dir, "store"),
        isolate: h.isolate ?? false,
      };
      const conf = sec
        ? renderSecureHubConf({
            ...o,
            certDir: sec.certDir,
            adminPassword: sec.adminPassword,
            leafPassword: sec.leafPassword,
            isolate: o.isolate,
          })
        : renderHubConf(o);
      this.writeFile(h.confFile, conf + portsFileDir);
      return;
    }
    const st = s.state as SiteState;
    const o = {
      site: st.site,
      host,
      clientPort,
      httpPort,
      storeDir: st.storeDir,
      hubLeafUrl: this.hub.leafUrl,
    };
    let conf = sec
      ? renderSecureSiteConf({ ...o, certDir: sec.certDir, leafPassword: sec.leafPassword })
      : renderSiteConf(o);
    const users = this.siteInclude?.(st.site);
    if (sec && users === undefined) throw new Error(`secure topology: no users for site ${st.site}`);
    if (users !== undefined) {
      this.writeFile(path.join(st.dir, "users.conf"), users);
      // the secure site template includes it itself
      if (!sec) conf += '\ninclude "users.conf"\n';
    }
    this.writeFile(st.confFile, conf + portsFileDir);
  }

  private async spawn(s: Server): Promise<void> {
    if (this.running(s)) throw new Error(`${s.state.name} is already running (pid ${s.proc?.pid})`);
    this.writeConf(s);
    s.proc = spawnLogged({
      cmd: this.natsServer,
      args: ["-c", s.state.confFile],
      cwd: s.state.dir,
      logFile: s.state.logFile,
      pidFile: s.state.pidFile,
      detached: this.detached,
      marker: s.state.confFile,
    });
    s.state.pid = s.proc.pid;
    s.startedOnce = true;
    await this.readPorts(s);
  }

  /**
   * The ports a server was left to choose (its first start), read back from it: client and monitoring
   * from the ports file it writes into `ports_file_dir` (`<exe>_<pid>.ports`), the hub's leaf port
   * from its `/varz`. Later starts bind the same ports again.
   */
  private async readPorts(s: Server): Promise<void> {
    const keys = s.kind === "hub" ? (["client", "http", "leaf"] as const) : (["client", "http"] as const);
    if (!keys.some((k) => this.portOf(s, k) === ANY_PORT)) return;
    const file = portsFile(s.state.dir, this.natsServer, s.proc!.pid);
    const chosen = await this.poll(s, `ports file ${file}`, () => readPortsFile(file));
    if (this.portOf(s, "client") === ANY_PORT) this.setPort(s, "client", chosen.client);
    if (this.portOf(s, "http") === ANY_PORT) this.setPort(s, "http", chosen.http);
    if (s.kind === "hub" && this.portOf(s, "leaf") === ANY_PORT) {
      const leaf = await this.poll(s, "its leaf port in /varz", async () => {
        const varz = (await getJson(`${s.state.httpUrl}/varz`)) as { leaf?: { port?: number } } | undefined;
        return varz?.leaf?.port;
      });
      this.setPort(s, "leaf", leaf);
    }
  }

  /** Poll `read` until it gives a value, while the server lives, within the start timeout. */
  private async poll<T>(
    s: Server,
    what: string,
    read: () => T | undefined | Promise<T | undefined>,
  ): Promise<T> {
    const t0 = Date.now();
    for (;;) {
      this.assertAlive(s);
      const v = await read();
      if (v !== undefined) return v;
      if (Date.now() - t0 > this.timeoutMs)
        throw new Error(
          `${s.state.name}: no ${what} within ${this.timeoutMs} ms; log tail:\n${tail(s.state.logFile, 15)}`,
        );
      await sleep(25);
    }
  }

  private assertAlive(s: Server): void {
    const p = s.proc;
    if (!p) return;
    if (p.exitInfo?.error)
      throw new Error(`${s.state.name}: cannot start ${this.natsServer}: ${p.exitInfo.error}`);
    if (!procAlive(p))
      throw new Error(`${s.state.name} ${describeExit(p)}; log tail:\n${tail(s.state.logFile, 15)}`);
  }

  private async waitHealthy(s: Server): Promise<void> {
    const t0 = Date.now();
    for (;;) {
      this.assertAlive(s);
      if ((await getJson(`${s.state.httpUrl}/healthz`))?.status === "ok") return;
      if (Date.now() - t0 > this.timeoutMs)
        throw new Error(
          `${s.state.name} not healthy within ${this.timeoutMs} ms; log tail:\n${tail(s.state.logFile, 15)}`,
        );
      await sleep(25);
    }
  }

  /**
   * Resolves when every running server is healthy and, if the hub runs, the hub sees every running
   * site as a leaf and every running site sees the hub. Throws if a started server has exited.
   */
  async waitForLeafs(limitMs = this.timeoutMs): Promise<number> {
    const t0 = Date.now();
    let last = "";
    while (Date.now() - t0 < limitMs) {
      const sites = [...this.siteServers.values()].filter((s) => s.proc);
      for (const s of [this.hubServer, ...sites]) if (s.proc) this.assertAlive(s);
      const hubUp = this.hubServer.proc !== undefined;
      const checks = await Promise.all(
        sites.map(async (s) => {
          const [lz, hz] = await Promise.all([
            getJson(`${s.state.httpUrl}/leafz`),
            getJson(`${s.state.httpUrl}/healthz`),
          ]);
          return hz?.status === "ok" && (!hubUp || lz?.leafnodes === 1);
        }),
      );
      let hubOk = true;
      if (hubUp) {
        const hz = await getJson(`${this.hub.httpUrl}/leafz`);
        hubOk = hz?.leafnodes === sites.length;
        last = `hub /leafz leafnodes=${JSON.stringify(hz?.leafnodes)}, want ${sites.length}`;
      }
      if (hubOk && checks.every(Boolean)) return Date.now() - t0;
      await sleep(50);
    }
    throw new Error(`leaf connections not up within ${limitMs} ms (${last})`);
  }

  /**
   * Request/reply from every running site to every other running site (needs the hub up); through
   * the hub relay when the hub isolates leaf interest (a site does not see the others' subscriptions).
   */
  async waitForMesh(limitMs = this.timeoutMs): Promise<void> {
    const isolated = (this.hub as HubState).isolate === true;
    if (!this.hubServer.proc) return;
    const sites = [...this.siteServers.values()].filter((s) => s.proc).map((s) => s.state as SiteState);
    if (sites.length < 2) return;
    const ncs = new Map<string, NatsConnection>();
    const t0 = Date.now();
    try {
      for (const s of sites) {
        const tls = this.clientTls();
        const nc = await connect({
          servers: s.url,
          name: `topology-probe-${s.site}`,
          ...(isolated ? { inboxPrefix: `${RELAY_REPLY_PREFIX}.${s.site}._topology` } : {}),
          ...(this.auth ? { user: this.auth.user, pass: this.auth.pass } : {}),
          ...(tls ? { tls } : {}),
        });
        ncs.set(s.site, nc);
        nc.subscribe(`_topology.probe.${s.site}`, { callback: (_e, m) => void m.respond(s.site) });
        await nc.flush();
      }
      for (const [from, nc] of ncs) {
        for (const to of ncs.keys()) {
          if (from === to) continue;
          for (;;) {
            try {
              const subject = `_topology.probe.${to}`;
              await nc.request(isolated ? relaySubject(subject) : subject, "", { timeout: 250 });
              break;
            } catch {
              /* not yet */
            }
            if (Date.now() - t0 > limitMs)
              throw new Error(`no route from site ${from} to site ${to} within ${limitMs} ms`);
            await sleep(25);
          }
        }
      }
    } finally {
      await Promise.all([...ncs.values()].map((nc) => nc.close().catch(() => {})));
    }
  }

  async waitReady(): Promise<void> {
    await this.waitForLeafs();
    if (this.probe) await this.waitForMesh();
  }

  /**
   * The stream sources between running servers that concern `scope` (the hub: every source whose
   * stream or origin is at the hub; a site: those of its streams and those taken from its domain)
   * and have not been heard from lately (read from each server's `/jsz`): `stream<source` per entry.
   * A source whose origin server is not running is ignored.
   */
  async stalledSources(scope: "hub" | { site: string }): Promise<string[]> {
    const running = [this.hubServer, ...this.siteServers.values()].filter((s) => this.running(s));
    const views = await Promise.all(
      running.map(async (s) => ({
        s,
        jsz: (await getJson(`${s.state.httpUrl}/jsz?accounts=true&streams=true&config=true`)) as
          | Jsz
          | undefined,
      })),
    );
    const domains = new Map<string, Server>();
    for (const v of views) if (v.jsz?.config?.domain) domains.set(v.jsz.config.domain, v.s);
    const inScope = (s: Server) =>
      scope === "hub"
        ? s === this.hubServer
        : s.kind === "site" && (s.state as SiteState).site === scope.site;
    const stalled: string[] = [];
    for (const { s, jsz } of views) {
      if (!jsz) {
        stalled.push(`${s.state.name}: /jsz does not answer`);
        continue;
      }
      for (const acct of jsz.account_details ?? [])
        for (const st of acct.stream_detail ?? [])
          for (const src of st.sources ?? []) {
            const dom = /^\$JS\.(.+)\.API$/.exec(src.external?.api ?? "")?.[1];
            const origin = dom ? domains.get(dom) : s;
            if (!origin || !(inScope(s) || inScope(origin))) continue;
            if (!(src.active >= 0 && src.active < SOURCE_HEARD_NS))
              stalled.push(
                `${st.name}<${src.name} at ${s.state.name} (${src.active < 0 ? "no consumer" : `silent ${Math.round(src.active / 1e9)} s`}${src.error ? `: ${src.error.description}` : ""})`,
              );
          }
    }
    return stalled;
  }

  /**
   * Resolves once {@link stalledSources} is empty for `scope` (ms waited); throws after `limitMs`
   * naming the sources still stalled.
   */
  async waitSourcesResumed(
    scope: "hub" | { site: string },
    limitMs = SOURCES_RESUME_LIMIT_MS,
  ): Promise<number> {
    const t0 = Date.now();
    for (;;) {
      const stalled = await this.stalledSources(scope);
      if (stalled.length === 0) return Date.now() - t0;
      if (Date.now() - t0 > limitMs)
        throw new Error(
          `stream sources did not resume within ${Math.round(limitMs / 1000)} s: ${stalled.join("; ")} (are the site's services running? without them nats-server 2.10+ retries a failed source after a back-off of up to 2 min)`,
        );
      await sleep(250);
    }
  }

  /** Stops the hub: every site keeps working locally but is cut off from the others. */
  async stopHub(): Promise<void> {
    await this.stopServerOf(this.hubServer);
  }

  /** (Re)starts the hub; by default waits until every running site is connected again. */
  async startHub(o: { wait?: boolean } = {}): Promise<void> {
    await this.spawn(this.hubServer);
    if (o.wait ?? true) {
      await this.waitHealthy(this.hubServer);
      await this.waitReady();
    }
  }

  /** Stops one site's nats-server (its services keep running and reconnect later). */
  async stopServer(site: string): Promise<void> {
    await this.stopServerOf(this.server(site));
  }

  /** (Re)starts one site's nats-server with its data; by default waits for its leaf connection. */
  async startServer(site: string, o: { wait?: boolean } = {}): Promise<void> {
    await this.spawn(this.server(site));
    if (o.wait ?? true) await this.waitReady();
  }

  /** Adds and starts one more site; by default waits until it is connected. */
  async addSite(site: string, o: { ports?: PortSpec; wait?: boolean } = {}): Promise<SiteState> {
    const srv = await this.defineSite(site, o.ports);
    await this.spawn(srv);
    if (o.wait ?? true) await this.waitReady();
    return srv.state as SiteState;
  }

  private async stopServerOf(s: Server): Promise<void> {
    if (s.proc) await stopProc(s.proc);
    s.proc = undefined;
    s.state.pid = undefined;
    removeFile(s.state.pidFile);
  }

  /** Stops every server (sites first, then the hub); removes an own temp dir unless keepDir. */
  async stop(): Promise<void> {
    await Promise.all([...this.siteServers.values()].map((s) => this.stopServerOf(s)));
    await this.stopServerOf(this.hubServer);
    if (this.ownDir && !this.keepDir) rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * One node of a site that is a JetStream cluster: deploy/nats/site.conf.template (same domain, same
 * leaf remote on every node) with a unique server name and a cluster block routing to the others.
 */
export function renderClusterSiteConf(o: {
  site: string;
  node: number;
  host: string;
  clientPort: number;
  httpPort: number;
  clusterPort: number;
  routePorts: number[];
  storeDir: string;
  hubLeafUrl: string;
}): string {
  const conf = renderSiteConf(o).replace(/^server_name: site-\S+/m, `server_name: site-${o.site}-${o.node}`);
  const routes = o.routePorts.map((p) => `"nats-route://${o.host}:${p}"`).join(", ");
  return `${conf}\ncluster {\n  name: site-${o.site}\n  listen: ${o.host}:${o.clusterPort}\n  routes: [${routes}]\n}\n`;
}

/** A site of `nodes` nats-servers in one JetStream cluster, each a leaf node of the hub. */
export type ClusterSite = {
  site: string;
  /** client URLs of every node */
  urls: string[];
  /** SIGKILL one node (0-based) */
  kill(node: number): Promise<void>;
  /** start a stopped node again and wait until it is healthy */
  start(node: number): Promise<void>;
  stop(): Promise<void>;
};

/** Start a clustered site (default 3 nodes) under `dir`, leaf-connected to `hubLeafUrl`. */
export async function startClusterSite(o: {
  site: string;
  dir: string;
  hubLeafUrl: string;
  nodes?: number;
  host?: string;
  natsServer?: string;
  timeoutMs?: number;
}): Promise<ClusterSite> {
  const host = o.host ?? "127.0.0.1";
  const n = o.nodes ?? 3;
  const bin = o.natsServer ?? findNatsServer();
  // a JetStream cluster needs its routes in the config: cluster ports are chosen before the start
  const ports: { client: number; http: number; cluster: number }[] = [];
  for (let i = 0; i < n; i++) ports.push({ client: ANY_PORT, http: ANY_PORT, cluster: await freePort(host) });
  const procs: (Proc | undefined)[] = new Array(n).fill(undefined);
  const nodeDir = (i: number) => path.join(o.dir, `site-${o.site}-${i}`);
  const spawnNode = (i: number) => {
    const dir = nodeDir(i);
    mkdirSync(dir, { recursive: true });
    const confFile = path.join(dir, "server.conf");
    const p = ports[i]!;
    writeFileSync(
      confFile,
      renderClusterSiteConf({
        site: o.site,
        node: i,
        host,
        clientPort: p.client,
        httpPort: p.http,
        clusterPort: p.cluster,
        routePorts: ports.filter((_, j) => j !== i).map((q) => q.cluster),
        storeDir: path.join(dir, "store"),
        hubLeafUrl: o.hubLeafUrl,
      }) + `\nports_file_dir: ${JSON.stringify(dir)}\n`,
    );
    procs[i] = spawnLogged({
      cmd: bin,
      args: ["-c", confFile],
      cwd: dir,
      logFile: path.join(dir, "server.log"),
      marker: confFile,
    });
  };
  const healthy = async (i: number) => {
    const t0 = Date.now();
    for (;;) {
      const p = procs[i];
      if (p && !procAlive(p))
        throw new Error(
          `site-${o.site}-${i} ${describeExit(p)}; log tail:\n${tail(path.join(nodeDir(i), "server.log"), 15)}`,
        );
      // the first start: the client and monitoring ports the node chose, kept for its restarts
      const chosen =
        ports[i]!.http === ANY_PORT && p ? readPortsFile(portsFile(nodeDir(i), bin, p.pid)) : undefined;
      if (chosen) Object.assign(ports[i]!, chosen);
      if (
        ports[i]!.http !== ANY_PORT &&
        (await getJson(`http://${host}:${ports[i]!.http}/healthz`))?.status === "ok"
      )
        return;
      if (Date.now() - t0 > (o.timeoutMs ?? 30_000)) throw new Error(`site-${o.site}-${i} not healthy`);
      await sleep(50);
    }
  };
  for (let i = 0; i < n; i++) spawnNode(i);
  for (let i = 0; i < n; i++) await healthy(i);
  return {
    site: o.site,
    urls: ports.map((p) => `nats://${host}:${p.client}`),
    kill: async (i) => {
      const p = procs[i];
      if (p) await killProc(p);
      procs[i] = undefined;
    },
    start: async (i) => {
      spawnNode(i);
      await healthy(i);
    },
    stop: async () => {
      await Promise.all(procs.map((p) => (p ? stopProc(p) : undefined)));
    },
  };
}
