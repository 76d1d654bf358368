/**
 * The local mesh and site launcher behind the shell scripts:
 *
 *   node --import tsx scripts/mesh.ts up                      (./scripts/up.sh)
 *   node --import tsx scripts/mesh.ts down                    (./scripts/down.sh)
 *   node --import tsx scripts/mesh.ts status
 *   node --import tsx scripts/mesh.ts hub stop|start          (./scripts/hub.sh)
 *   node --import tsx scripts/mesh.ts server <site> stop|start (./scripts/server.sh)
 *   node --import tsx scripts/mesh.ts site <site> start|stop|status [flags]  (./scripts/site.sh)
 *
 * State: `$MESH_DIR/mesh.json` (default <repo>/.mesh) plus pid files:
 * `hub/hub.pid`, `site-<x>/server.pid`, `site-<x>/<kind>-<n>.pid`. Logs: `$MESH_DIR/logs/hub.log`,
 * `$MESH_DIR/logs/site-<x>/{server,<kind>-<n>}.log` (kept by down, cleared by the next up).
 *
 * SECURE=1 up starts the secured variant (deploy/SECURITY.md): certificates in `$MESH_DIR/certs`
 * (scripts/gen-certs.sh), random passwords in `$MESH_DIR/secrets/` (one file per user, mode 0600:
 * `admin`, `leaf`, `<site>/{syncd,app,reader}`), the services get theirs through the environment.
 * mesh.json records where they are (never the passwords); the other commands read them from there.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { Kvm } from "@nats-io/kv";
import type { ConnectionOptions } from "@nats-io/nats-core";
import { connect } from "@nats-io/transport-node";
import { ConfigError, connectNats, loadConfig, openOrCreateKv } from "../services/mod.ts";
import { isAlive, readPidFile, stopProc } from "./lib/proc.ts";
import {
  type PingAnswer,
  SERVICE_KINDS,
  SiteServices,
  formatScale,
  parseScale,
  pingSite,
} from "./lib/services.ts";
import {
  type SecureOptions,
  Topology,
  type TopologyState,
  certFiles,
  ensureCerts,
  meshDir,
  planSitePorts,
  randomPassword,
  renderSiteUsersConf,
} from "./lib/topology.ts";

const env = process.env;

/**
 * Where the user ran the script (the shell wrappers cd to the repo root and pass it along): relative
 * paths the user gives (MESH_DIR, state/log dirs, credential and TLS files) are meant from there.
 */
const callerCwd = env.SYNCD_CALLER_CWD || process.cwd();
const fromCaller = (p: string): string => path.resolve(callerCwd, p);

/** Service flags and variables that name files: made absolute, as services run in the repo root. */
const FILE_FLAGS = ["creds", "nkey", "tls-ca", "tls-cert", "tls-key", "tlsca", "tlscert", "tlskey"];
const FILE_ENV = [
  "NATS_CREDS",
  "NATS_NKEY",
  "NATS_TLS_CA",
  "NATS_TLS_CERT",
  "NATS_TLS_KEY",
  "NATS_CA",
  "NATS_CERT",
  "NATS_KEY",
];
for (const k of FILE_ENV) {
  const v = env[k];
  if (v) env[k] = fromCaller(v);
}

class UsageError extends Error {}

const stateFile = (): string => path.join(meshDir(), "mesh.json");
const logDir = (): string => path.join(meshDir(), "logs");
const siteLogDir = (site: string): string => path.join(logDir(), `site-${site}`);

/** What mesh.json holds. `hub`/`sites` are the documented part; `topology` is for re-attaching. */
type MeshState = {
  version: 1;
  dir: string;
  started_at: string;
  buckets: string[];
  scale: string;
  hub: {
    url: string;
    monitor_url: string;
    leaf_url: string;
    pid: number | null;
    log: string;
    /** the hub isolates leaf interest: a site's own clients see that site only */
    isolated: boolean;
  };
  sites: Record<
    string,
    {
      url: string;
      domain: string;
      node_id: string;
      monitor_url: string;
      pid: number | null;
      log: string;
      services_dir: string;
      services: { kind: string; n: number; pid: number; log: string }[];
    }
  >;
  topology: TopologyState;
  /** SECURE=1: where the certificates and the password files are (never the passwords themselves) */
  secure?: { certs: string; secrets: string };
};

/** The site users of a secured mesh (deploy/nats/site-users.conf.template). */
const SITE_USERS = ["syncd", "app", "reader"] as const;

/** The secrets of a secured mesh, read back from its password files. */
type Secure = {
  certs: string;
  secrets: string;
  ca: string;
  admin: string;
  leaf: string;
  site: (site: string) => Record<(typeof SITE_USERS)[number], string>;
};

function secretFile(dir: string, ...name: string[]): string {
  return path.join(dir, ...name);
}

function writeSecret(file: string, value: string): void {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  writeFileSync(file, `${value}\n`, { mode: 0o600 });
}

function readSecret(file: string): string {
  try {
    return readFileSync(file, "utf8").trim();
  } catch (err) {
    throw new Error(`cannot read the secret ${file} of the secured mesh: ${(err as Error).message}`);
  }
}

/** Create certificates and passwords for a new secured mesh (random passwords, one per user and site). */
function createSecure(dir: string, sites: string[]): Secure {
  const secrets = path.join(dir, "secrets");
  mkdirSync(secrets, { recursive: true, mode: 0o700 });
  writeSecret(secretFile(secrets, "admin"), randomPassword());
  writeSecret(secretFile(secrets, "leaf"), randomPassword());
  for (const s of sites) for (const u of SITE_USERS) writeSecret(secretFile(secrets, s, u), randomPassword());
  ensureCerts(path.join(dir, "certs"));
  return loadSecure({ certs: path.join(dir, "certs"), secrets });
}

function loadSecure(rec: { certs: string; secrets: string }): Secure {
  return {
    certs: rec.certs,
    secrets: rec.secrets,
    ca: certFiles(rec.certs).ca,
    admin: readSecret(secretFile(rec.secrets, "admin")),
    leaf: readSecret(secretFile(rec.secrets, "leaf")),
    site: (site) => {
      const out = { syncd: "", app: "", reader: "" };
      for (const u of SITE_USERS) out[u] = readSecret(secretFile(rec.secrets, site, u));
      return out;
    },
  };
}

function secureOf(st: MeshState | undefined): Secure | undefined {
  return st?.secure ? loadSecure(st.secure) : undefined;
}

/** What Topology.start/attach need for a secured mesh. */
function topologySecure(sec: Secure): {
  secure: SecureOptions;
  siteInclude: (site: string) => string;
  auth: { user: string; pass: string };
} {
  return {
    secure: { certDir: sec.certs, adminPassword: sec.admin, leafPassword: sec.leaf },
    siteInclude: (site) => {
      const p = sec.site(site);
      return renderSiteUsersConf({
        site,
        syncdPassword: p.syncd,
        appPassword: p.app,
        readerPassword: p.reader,
        adminPassword: sec.admin,
      });
    },
    auth: { user: "admin", pass: sec.admin },
  };
}

/** Connection options of the launcher's own connections (admin over TLS in a secured mesh). */
function adminConn(sec: Secure | undefined): Partial<ConnectionOptions> {
  return sec ? { user: "admin", pass: sec.admin, tls: { caFile: sec.ca } } : {};
}

/** The environment of a site's services in a secured mesh: user syncd, its password, the CA. */
function servicesEnv(sec: Secure, site: string): NodeJS.ProcessEnv {
  return {
    ...env,
    NATS_USER: "syncd",
    NATS_PASSWORD: sec.site(site).syncd,
    NATS_TLS_CA: sec.ca,
  };
}

function readState(): MeshState | undefined {
  const f = stateFile();
  if (!existsSync(f)) return undefined;
  try {
    return JSON.parse(readFileSync(f, "utf8")) as MeshState;
  } catch (err) {
    throw new Error(`cannot read ${f}: ${(err as Error).message}`);
  }
}

function buildState(
  topo: Topology,
  buckets: string[],
  scale: string,
  svc: Map<string, SiteServices>,
  startedAt?: string,
  secure?: MeshState["secure"],
): MeshState {
  const t = topo.state();
  return {
    ...(secure ? { secure } : {}),
    version: 1,
    dir: t.dir,
    started_at: startedAt ?? new Date().toISOString(),
    buckets,
    scale,
    hub: {
      url: t.hub.url,
      monitor_url: t.hub.httpUrl,
      leaf_url: t.hub.leafUrl,
      pid: t.hub.pid ?? null,
      log: t.hub.logFile,
      isolated: t.hub.isolate === true,
    },
    sites: Object.fromEntries(
      Object.entries(t.sites).map(([k, s]) => [
        k,
        {
          url: s.url,
          domain: s.domain,
          node_id: `site-${k}`,
          monitor_url: s.httpUrl,
          pid: s.pid ?? null,
          log: s.logFile,
          services_dir: s.dir,
          services: (svc.get(k)?.instances ?? [])
            .filter((i) => i.alive())
            .map((i) => ({ kind: i.kind, n: i.n, pid: i.pid, log: i.logFile })),
        },
      ]),
    ),
    topology: t,
  };
}

function writeState(st: MeshState): void {
  writeFileSync(stateFile(), `${JSON.stringify(st, null, 2)}\n`);
}

function attachServices(site: string, dir: string, natsUrl: string, sec?: Secure): SiteServices {
  return SiteServices.attach({
    site,
    natsUrl,
    dir,
    logDir: siteLogDir(site),
    detached: true,
    ...(sec
      ? {
          env: servicesEnv(sec, site),
          connect: () => connect({ servers: natsUrl, name: `syncd-launcher-${site}`, ...adminConn(sec) }),
        }
      : {}),
  });
}

/** Every process recorded in the state: [label, alive]. */
function recorded(st: MeshState): { label: string; alive: boolean }[] {
  const out: { label: string; alive: boolean }[] = [];
  const t = st.topology;
  if (t.hub.pid) out.push({ label: `hub (pid ${t.hub.pid})`, alive: isAlive(t.hub.pid, t.hub.confFile) });
  for (const [k, s] of Object.entries(t.sites)) {
    if (s.pid) out.push({ label: `site-${k} nats-server (pid ${s.pid})`, alive: isAlive(s.pid, s.confFile) });
    for (const i of attachServices(k, s.dir, s.url).instances)
      out.push({ label: `site ${k} ${i.name} (${i.pidFile})`, alive: i.alive() });
  }
  return out;
}

function intEnv(name: string, def: number): number {
  const v = env[name];
  if (v === undefined || v === "") return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 65535)
    throw new UsageError(`${name} must be a port number, got ${v}`);
  return n;
}

function listEnv(name: string, def: string): string[] {
  return (env[name] || def)
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter(Boolean);
}

/** Live processes named by pid files in MESH_DIR (whatever mesh.json says). */
function leftovers(dir: string): string[] {
  const out: string[] = [];
  if (!existsSync(dir)) return out;
  const hubPid = readPidFile(path.join(dir, "hub", "hub.pid"));
  if (hubPid && isAlive(hubPid, path.join(dir, "hub", "hub.conf"))) out.push(`hub (pid ${hubPid})`);
  for (const f of readdirSync(dir)) {
    const m = /^site-([A-Za-z0-9_-]+)$/.exec(f);
    if (!m) continue;
    const d = path.join(dir, f);
    const pid = readPidFile(path.join(d, "server.pid"));
    if (pid && isAlive(pid, path.join(d, "server.conf"))) out.push(`site-${m[1]} nats-server (pid ${pid})`);
    for (const i of attachServices(m[1] as string, d, "").instances)
      if (i.alive()) out.push(`site ${m[1]} ${i.name} (pid ${i.pid})`);
  }
  return out;
}

/** Remove what a previous (dead) mesh left in MESH_DIR: only the entries this script creates. */
function cleanMeshDir(dir: string): void {
  if (!existsSync(dir)) return;
  for (const f of readdirSync(dir)) {
    if (
      f === "mesh.json" ||
      f === "hub" ||
      f === "logs" ||
      f === "certs" ||
      f === "secrets" ||
      /^site-[A-Za-z0-9_-]+$/.test(f)
    )
      rmSync(path.join(dir, f), { recursive: true, force: true });
  }
}

function printSummary(st: MeshState, found?: Map<string, PingAnswer[]>): void {
  console.log(`hub     ${st.hub.url}  (monitor ${st.hub.monitor_url}, leaf ${st.hub.leaf_url})`);
  for (const [k, s] of Object.entries(st.sites)) {
    console.log(`site ${k}  ${s.url}  (domain ${s.domain}, node ${s.node_id}, monitor ${s.monitor_url})`);
    const answers = found?.get(k);
    if (answers) {
      const counts = SERVICE_KINDS.map(
        (kind) => `syncd-${kind}×${answers.filter((a) => a.kind === kind).length}`,
      );
      console.log(`        services answering PING: ${counts.join(", ")}`);
    }
  }
  const [a, b] = Object.values(st.sites);
  const [an, bn] = Object.keys(st.sites);
  const bucket = st.buckets[0] ?? "config";
  console.log(`\nstate ${stateFile()}; logs in ${logDir()}/`);
  const sec = st.secure;
  if (sec) {
    console.log(
      `\nSECURE: users and TLS (deploy/SECURITY.md). CA ${path.join(sec.certs, "ca.pem")}; passwords in ${sec.secrets}/`,
    );
    console.log("  (admin, leaf, <site>/syncd, <site>/app, <site>/reader; one file each, mode 0600)");
  }
  /** the nats CLI's connection flags for a user of a site */
  const as = (site: string | undefined, url: string, user: string) =>
    sec
      ? `--server ${url} --tlsca ${path.join(sec.certs, "ca.pem")} --user ${user} --password "$(cat ${user === "admin" ? path.join(sec.secrets, "admin") : path.join(sec.secrets, site ?? "", user)})"`
      : `--server ${url}`;
  console.log("\nTry it (nats CLI: https://github.com/nats-io/natscli):");
  if (a) console.log(`  nats ${as(an, a.url, "app")} kv put ${bucket} app.theme dark`);
  if (b) console.log(`  nats ${as(bn, b.url, sec ? "reader" : "app")} kv get ${bucket} app.theme`);
  if (a) console.log(`  nats ${as(an, a.url, sec ? "reader" : "app")} micro ls`);
  if (a)
    console.log(
      `  nats ${as(an, a.url, "app")} pub rep.kv.ops '{"op":"put","bucket":"${bucket}","key":"app.lang","value":"en","ts":1,"node_id":"by-hand"}'`,
    );
  console.log("  ./scripts/hub.sh stop|start         partition / heal");
  console.log("  ./scripts/server.sh <site> stop|start   one site's server down / up");
  console.log("  ./scripts/site.sh <site> status     one site's services");
  console.log("  ./scripts/down.sh                   stop everything");
}

async function pingAll(st: MeshState): Promise<Map<string, PingAnswer[]>> {
  const out = new Map<string, PingAnswer[]>();
  const sec = secureOf(st);
  for (const [k, s] of Object.entries(st.sites)) {
    try {
      const nc = await connect({
        servers: s.url,
        name: "syncd-mesh-status",
        timeout: 1000,
        ...adminConn(sec),
      });
      try {
        out.set(k, await pingSite(nc, k, 300));
      } finally {
        await nc.close();
      }
    } catch {
      out.set(k, []);
    }
  }
  return out;
}

async function up(): Promise<number> {
  const dir = meshDir();
  const old = readState();
  if (old) {
    const procs = recorded(old);
    const alive = procs.filter((p) => p.alive);
    if (alive.length > 0 && alive.length === procs.length) {
      console.log(
        `mesh already running (state ${stateFile()}, ${alive.length} processes); ./scripts/down.sh stops it`,
      );
      printSummary(old, await pingAll(old));
      return 0;
    }
    if (alive.length > 0) {
      console.error(`mesh partly running (state ${stateFile()}); not running:`);
      for (const p of procs.filter((x) => !x.alive)) console.error(`  ${p.label}`);
      console.error(
        "restart the missing parts (./scripts/hub.sh start, ./scripts/server.sh <site> start, ./scripts/site.sh <site> start)",
      );
      console.error("or start over: ./scripts/down.sh && ./scripts/up.sh");
      return 1;
    }
    console.log(`stale mesh state in ${dir} (no recorded process is alive): cleaning up and starting fresh`);
  } else {
    const left = leftovers(dir);
    if (left.length > 0) {
      console.error(`no ${stateFile()}, but processes of an earlier mesh in ${dir} still run:`);
      for (const l of left) console.error(`  ${l}`);
      console.error("stop them with ./scripts/down.sh, then run ./scripts/up.sh again");
      return 1;
    }
  }
  cleanMeshDir(dir);

  const sites = listEnv("SITES", "a b");
  const buckets = listEnv("BUCKET", "config");
  const scale = parseScale(env.SCALE || undefined);
  const agent = agentMode(env.MODE);
  const hubClient = intEnv("HUB_PORT", 7222);
  const hubPorts = {
    client: hubClient,
    http: intEnv("HUB_HTTP_PORT", hubClient + 1),
    leaf: intEnv("HUB_LEAF_PORT", 7422),
  };
  const base = intEnv("SITE_BASE_PORT", 4222);
  const step = intEnv("SITE_PORT_STEP", 1000);
  const planned = planSitePorts(sites.length, base, step, Object.values(hubPorts), !env.SITE_PORT_STEP);
  if (!planned)
    throw new UsageError(
      `${sites.length} sites do not fit below port 65535 from SITE_BASE_PORT=${base} in steps of ${step}: set SITE_BASE_PORT/SITE_PORT_STEP`,
    );
  const sitePorts = (_s: string, i: number) => planned[i];
  // Refuse a plan where two servers share a port (e.g. SITE_PORT_STEP=1: a monitor port on the next
  // site's client port, or HUB_LEAF_PORT on a site's).
  const used = new Map<number, string>();
  const claim = (p: number, who: string) => {
    const prev = used.get(p);
    if (prev)
      throw new UsageError(
        `port ${p} is planned twice (${prev} and ${who}): set HUB_PORT/SITE_BASE_PORT/SITE_PORT_STEP`,
      );
    if (p > 65535) throw new UsageError(`port ${p} of ${who} is out of range`);
    used.set(p, who);
  };
  claim(hubPorts.client, "hub client");
  claim(hubPorts.http, "hub monitor");
  claim(hubPorts.leaf, "hub leaf");
  planned.forEach((p, i) => {
    claim(p.client, `site ${sites[i]} client`);
    claim(p.http, `site ${sites[i]} monitor`);
  });

  const secureMode = /^(1|true|yes)$/i.test(env.SECURE ?? "");
  if (env.SECURE && !secureMode && !/^(0|false|no)$/i.test(env.SECURE))
    throw new UsageError(`SECURE must be 1 or 0, got ${env.SECURE}`);

  const t0 = Date.now();
  console.log(
    `starting hub + sites ${sites.join(", ")} in ${dir}${secureMode ? " (SECURE: users + TLS)" : ""}`,
  );
  const sec = secureMode ? createSecure(dir, sites) : undefined;
  const secRec = sec ? { certs: sec.certs, secrets: sec.secrets } : undefined;
  const topo = await Topology.start({
    sites,
    dir,
    logDir: logDir(),
    detached: true,
    hubPorts,
    sitePorts,
    ...(sec ? topologySecure(sec) : {}),
  });
  const svc = new Map<string, SiteServices>();
  // Record the servers at once: should this process die from here on, down.sh still finds them.
  writeState(buildState(topo, buckets, formatScale(scale), svc, undefined, secRec));
  try {
    for (const s of sites) {
      const nc = await connect({ servers: topo.site(s).url, name: "syncd-up", ...adminConn(sec) });
      try {
        for (const b of buckets) await openOrCreateKv(new Kvm(nc), b);
      } finally {
        await nc.close();
      }
    }
    console.log(
      `servers up in ${Date.now() - t0} ms; bucket(s) ${buckets.join(", ")} ready; starting services (${agent ? "one agent process per site, " : ""}${formatScale(scale)})`,
    );
    await Promise.all(
      sites.map(async (s) => {
        const st = topo.site(s);
        const ss = new SiteServices({
          site: s,
          natsUrl: st.url,
          buckets,
          nodeId: `site-${s}`,
          dir: st.dir,
          logDir: siteLogDir(s),
          detached: true,
          agent,
          readyTimeoutMs: 60000,
          ...(sec
            ? {
                env: servicesEnv(sec, s),
                connect: () => connect({ servers: st.url, name: `syncd-launcher-${s}`, ...adminConn(sec) }),
              }
            : {}),
        });
        svc.set(s, ss);
        await ss.start(scale);
      }),
    );
  } catch (err) {
    console.error(`up failed, stopping what was started (logs kept in ${logDir()}):`);
    await Promise.all([...svc.values()].map((s) => s.stop()));
    await topo.stop();
    rmSync(stateFile(), { force: true });
    throw err;
  }
  const st = buildState(topo, buckets, formatScale(scale), svc, undefined, secRec);
  writeState(st);
  console.log(`mesh up in ${Date.now() - t0} ms\n`);
  printSummary(st, await pingAll(st));
  return 0;
}

/**
 * Stop what the mesh in MESH_DIR started: the processes recorded in mesh.json and in the pid files
 * (`hub/hub.pid`, `site-<x>/server.pid`, `site-<x>/<kind>-<n>.pid`, also without a mesh.json, e.g.
 * after an interrupted up), each checked against its command line before it is signalled.
 */
async function down(): Promise<number> {
  const dir = meshDir();
  const st = readState();
  const siteDirs = new Map<string, string>();
  for (const [k, s] of Object.entries(st?.topology.sites ?? {})) siteDirs.set(k, s.dir);
  if (existsSync(dir))
    for (const f of readdirSync(dir)) {
      const m = /^site-([A-Za-z0-9_-]+)$/.exec(f);
      if (m && !siteDirs.has(m[1] as string)) siteDirs.set(m[1] as string, path.join(dir, f));
    }
  const hubConf = st?.topology.hub.confFile ?? path.join(dir, "hub", "hub.conf");
  const hubPidFile = st?.topology.hub.pidFile ?? path.join(dir, "hub", "hub.pid");
  // services first, then the site servers, then the hub
  let stopped = 0;
  await Promise.all(
    [...siteDirs].map(async ([k, d]) => {
      const ss = attachServices(k, d, "");
      const live = ss.instances.filter((i) => i.alive());
      stopped += live.length;
      if (live.length)
        console.log(`stopping site ${k} services: ${live.map((i) => `${i.name} (pid ${i.pid})`).join(", ")}`);
      await ss.stop();
    }),
  );
  const server = async (label: string, pidFile: string, conf: string, recordedPid?: number | null) => {
    for (const pid of new Set([recordedPid ?? undefined, readPidFile(pidFile)])) {
      if (!pid || !isAlive(pid, conf)) continue;
      console.log(`stopping ${label} (pid ${pid})`);
      stopped++;
      await stopProc({ pid, marker: conf });
    }
    rmSync(pidFile, { force: true });
  };
  await Promise.all(
    [...siteDirs].map(([k, d]) => {
      const rec = st?.topology.sites[k];
      return server(
        `site-${k} nats-server`,
        rec?.pidFile ?? path.join(d, "server.pid"),
        rec?.confFile ?? path.join(d, "server.conf"),
        rec?.pid,
      );
    }),
  );
  await server("hub", hubPidFile, hubConf, st?.topology.hub.pid);
  if (!st && stopped === 0) {
    console.log(`no mesh running in ${dir}: nothing to stop`);
    return 0;
  }
  for (const d of siteDirs.values()) rmSync(path.join(d, "store"), { recursive: true, force: true });
  // A secured mesh's passwords and keys (and the configs holding them) go with it.
  for (const f of ["secrets", "certs"]) rmSync(path.join(dir, f), { recursive: true, force: true });
  if (st?.secure) {
    rmSync(st.topology.hub.confFile, { force: true });
    for (const d of siteDirs.values())
      for (const f of ["server.conf", "users.conf"]) rmSync(path.join(d, f), { force: true });
  }
  rmSync(stateFile(), { force: true });
  console.log(
    `mesh stopped; JetStream data and ${stateFile()} removed, logs kept in ${logDir()} (until the next up)`,
  );
  return 0;
}

async function status(): Promise<number> {
  const st = readState();
  if (!st) {
    console.log(`no mesh state at ${stateFile()}: not running`);
    return 3;
  }
  const procs = recorded(st);
  for (const p of procs) console.log(`${p.alive ? "running" : "DEAD   "}  ${p.label}`);
  printSummary(st, await pingAll(st));
  return procs.every((p) => p.alive) ? 0 : 1;
}

function requireState(): MeshState {
  const st = readState();
  if (!st) throw new UsageError(`no mesh state at ${stateFile()}: start the mesh with ./scripts/up.sh`);
  return st;
}

/** Rewrite the pids in the state after a server stop/start. */
function saveTopology(st: MeshState, topo: Topology): void {
  const svc = new Map<string, SiteServices>();
  for (const [k, s] of Object.entries(topo.sites)) svc.set(k, attachServices(k, s.dir, s.url));
  writeState(buildState(topo, st.buckets, st.scale, svc, st.started_at, st.secure));
}

/** Drive the recorded topology; a secured one with its configs and credentials. */
function attachTopology(st: MeshState): Topology {
  const sec = secureOf(st);
  return Topology.attach(st.topology, sec ? topologySecure(sec) : {});
}

/** Wait for the stream sources a restart concerns; false (said on stderr) when they did not resume. */
async function sourcesResumed(topo: Topology, scope: "hub" | { site: string }): Promise<boolean> {
  try {
    await topo.waitSourcesResumed(scope);
    return true;
  } catch (err) {
    console.error(`the server runs, but ${(err as Error).message}`);
    return false;
  }
}

async function hubCmd(args: string[]): Promise<number> {
  const action = args[0];
  if (action !== "stop" && action !== "start") throw new UsageError("usage: hub.sh stop|start");
  const st = requireState();
  const topo = attachTopology(st);
  if (action === "stop") {
    if (!topo.hubRunning()) console.log("hub is not running");
    else {
      await topo.stopHub();
      console.log("hub stopped: every site now works alone (partition)");
    }
  } else if (topo.hubRunning()) {
    console.log(`hub already running (pid ${topo.hub.pid})`);
  } else {
    const t0 = Date.now();
    await topo.startHub();
    const linked = Date.now() - t0;
    saveTopology(st, topo);
    if (!(await sourcesResumed(topo, "hub"))) return 1;
    console.log(
      `hub started (pid ${topo.hub.pid}); every running site connected again after ${linked} ms, stream sources resumed after ${Date.now() - t0} ms`,
    );
  }
  saveTopology(st, topo);
  return 0;
}

async function serverCmd(args: string[]): Promise<number> {
  const [site, action] = args;
  if (!site || (action !== "stop" && action !== "start"))
    throw new UsageError("usage: server.sh <site> stop|start");
  const st = requireState();
  const topo = attachTopology(st);
  if (!topo.sites[site])
    throw new UsageError(`no site ${site} in ${stateFile()} (sites: ${Object.keys(topo.sites).join(", ")})`);
  if (action === "stop") {
    if (!topo.serverRunning(site)) console.log(`site-${site} nats-server is not running`);
    else {
      await topo.stopServer(site);
      console.log(
        `site-${site} nats-server stopped (its services keep running and reconnect when it is back)`,
      );
    }
  } else if (topo.serverRunning(site)) {
    console.log(`site-${site} nats-server already running (pid ${topo.site(site).pid})`);
  } else {
    const t0 = Date.now();
    await topo.startServer(site);
    const s = topo.site(site);
    const ss = attachServices(site, s.dir, s.url, secureOf(st));
    await ss.waitReady();
    const ready = Date.now() - t0;
    saveTopology(st, topo);
    if (!(await sourcesResumed(topo, { site }))) return 1;
    console.log(
      `site-${site} nats-server started (pid ${s.pid}); leaf connected${ss.running().length ? " and services answering" : ""} after ${ready} ms, stream sources resumed after ${Date.now() - t0} ms`,
    );
  }
  saveTopology(st, topo);
  return 0;
}

/** `site <site> start|stop|status [--nats-url u] [--bucket b] [--node-id n] [--clock c] [--scale s] [...]` */
async function siteCmd(args: string[]): Promise<number> {
  const [site, action, ...rest] = args;
  const usage =
    "usage: site.sh <site> start|stop|status [--nats-url URL] [--bucket B[,B]] [--node-id ID] [--clock hlc|lamport] [--scale SPEC] [--mode agent|services] [--state-dir DIR] [--log-dir DIR] [--http-port BASE] [service flags: --creds F --user U --password P --tlsca F ...]";
  if (!site || !/^[A-Za-z0-9_-]+$/.test(site) || !["start", "stop", "status"].includes(action ?? ""))
    throw new UsageError(usage);
  const opts: Record<string, string> = {};
  const pass: string[] = [];
  const own = [
    "nats-url",
    "bucket",
    "node-id",
    "clock",
    "scale",
    "mode",
    "state-dir",
    "log-dir",
    "http-port",
  ];
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i] as string;
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
    if (m && own.includes(m[1] as string)) {
      const v = m[2] ?? rest[++i];
      if (v === undefined) throw new UsageError(`${a} needs a value\n${usage}`);
      opts[m[1] as string] = v;
    } else if (m && FILE_FLAGS.includes(m[1] as string)) {
      const v = m[2] ?? rest[++i];
      if (v === undefined) throw new UsageError(`${a} needs a value\n${usage}`);
      pass.push(`--${m[1]}`, fromCaller(v));
    } else pass.push(a);
  }
  const meshState = readState();
  const meshSite = meshState?.sites[site];
  const natsUrl = opts["nats-url"] || env.NATS_URL || meshSite?.url || "nats://127.0.0.1:4222";
  const buckets = (opts.bucket || env.SYNCD_BUCKETS || "config").split(",").filter(Boolean);
  const nodeId = opts["node-id"] || env.SYNCD_NODE_ID || undefined;
  const clock = opts.clock || env.SYNCD_CLOCK || undefined;
  if (clock !== undefined && clock !== "hlc" && clock !== "lamport")
    throw new UsageError("--clock must be hlc or lamport");
  const stateDir = opts["state-dir"] || env.SYNCD_STATE_DIR;
  const dir = stateDir ? fromCaller(stateDir) : path.join(meshDir(), `site-${site}`);
  // Logs: next to the pid files of an explicit state dir, else where up.sh puts the site's logs.
  const logArg = opts["log-dir"] || env.SYNCD_LOG_DIR;
  const logs = logArg ? fromCaller(logArg) : stateDir ? dir : siteLogDir(site);
  const scale = parseScale(opts.scale || env.SCALE || undefined);
  const agent = agentMode(opts.mode || env.MODE);
  // One HTTP port per process (each kind its own, as the systemd units): never the same to all.
  const httpText = opts["http-port"] ?? env.SYNCD_HTTP_PORT;
  const httpPortBase = httpText ? Number(httpText) : undefined;
  if (
    httpPortBase !== undefined &&
    !(Number.isInteger(httpPortBase) && httpPortBase > 0 && httpPortBase < 65500)
  )
    throw new UsageError(`--http-port must be a port number, got ${JSON.stringify(httpText)}`);

  // A site of a secured mesh (SECURE=1 up): unless told otherwise, its services log in as the
  // site's syncd user and verify the server with the mesh's CA, through the environment.
  let svcEnv: NodeJS.ProcessEnv = env;
  const sec = meshSite && natsUrl === meshSite.url ? secureOf(meshState) : undefined;
  if (sec) {
    const given = (flagNames: string[], vars: string[]) =>
      pass.some((a) => flagNames.some((f) => a === `--${f}` || a.startsWith(`--${f}=`))) ||
      vars.some((v) => env[v]);
    svcEnv = { ...env };
    if (!given(["user", "creds", "nkey", "token"], ["NATS_USER", "NATS_CREDS", "NATS_NKEY", "NATS_TOKEN"])) {
      svcEnv.NATS_USER = "syncd";
      svcEnv.NATS_PASSWORD = sec.site(site).syncd;
    }
    if (!given(["tls-ca", "tlsca"], ["NATS_TLS_CA", "NATS_CA"])) svcEnv.NATS_TLS_CA = sec.ca;
  }
  if (httpPortBase !== undefined) {
    svcEnv = { ...svcEnv };
    svcEnv.SYNCD_HTTP_PORT = undefined;
  }
  // The readiness PING uses the services' own config parsing and connection (auth, TLS).
  const cfgArgs = ["--site", site, "--nats-url", natsUrl, "--bucket", buckets.join(","), ...pass];
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig(cfgArgs, svcEnv);
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(`${err.message}\n${usage}`);
    throw err;
  }
  const ss = SiteServices.attach({
    site,
    natsUrl,
    buckets,
    ...(nodeId ? { nodeId } : {}),
    ...(clock ? { clock: clock as "hlc" | "lamport" } : {}),
    extraArgs: pass,
    ...(httpPortBase !== undefined ? { httpPortBase } : {}),
    env: svcEnv,
    dir,
    logDir: logs,
    detached: true,
    agent,
    readyTimeoutMs: 60000,
    connect: () => connectNats({ ...config, natsUrl: natsUrl.split(",") }, `syncd-site-sh-${site}`),
  });

  if (action === "stop") {
    const live = ss.instances.filter((i) => i.alive());
    if (live.length === 0) console.log(`no services of site ${site} running (state ${dir})`);
    else
      console.log(
        `stopping site ${site} services: ${live.map((i) => `${i.name} (pid ${i.pid})`).join(", ")}`,
      );
    await ss.stop();
    return 0;
  }
  if (action === "status") {
    const live = ss.instances.filter((i) => i.alive());
    for (const i of ss.instances)
      console.log(
        `${i.alive() ? "running" : "DEAD   "}  ${i.name}  ${i.alive() ? `pid ${i.pid}` : ""}  ${i.logFile}`,
      );
    if (ss.instances.length === 0) console.log(`no services of site ${site} recorded in ${dir}`);
    try {
      const nc = await connectNats({ ...config, natsUrl: natsUrl.split(",") }, `syncd-site-sh-${site}`);
      try {
        const found = await pingSite(nc, site, 500);
        console.log(`services of site ${site} answering PING at ${natsUrl}:`);
        for (const a of found)
          console.log(
            `  ${a.name}  id ${a.id}  instance ${a.instance ?? "?"}  buckets ${a.metadata.buckets ?? "?"}`,
          );
        if (found.length === 0) console.log("  (none)");
      } finally {
        await nc.close();
      }
    } catch (err) {
      console.log(`cannot reach ${natsUrl}: ${(err as Error).message}`);
    }
    return live.length === 0 ? 3 : live.length === ss.instances.length ? 0 : 1;
  }
  // start
  const before = ss.instances.filter((i) => i.alive()).map((i) => i.name);
  const started = await ss.start(scale);
  if (started.length === 0) {
    console.log(`services of site ${site} already running: ${before.join(", ")}`);
  } else {
    console.log(
      `site ${site}: started ${started.map((i) => `${i.name} (pid ${i.pid})`).join(", ")} against ${natsUrl}; all answer PING`,
    );
    console.log(`pid files in ${dir}, logs in ${logs}; stop with ./scripts/site.sh ${site} stop`);
  }
  return 0;
}

/** MODE: `agent` runs each site's four services in one process, `services` (default) one process each. */
function agentMode(mode: string | undefined): boolean {
  if (mode === undefined || mode === "" || mode === "services") return false;
  if (mode === "agent") return true;
  throw new UsageError(`MODE (--mode) must be agent or services, got ${mode}`);
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...args] = argv;
  switch (cmd) {
    case "up":
      return up();
    case "down":
      return down();
    case "status":
      return status();
    case "hub":
      return hubCmd(args);
    case "server":
      return serverCmd(args);
    case "site":
      return siteCmd(args);
    default:
      throw new UsageError(
        "usage: mesh.ts up | down | status | hub stop|start | server <site> stop|start | site <site> start|stop|status [flags]",
      );
  }
}

// A closed stdout (e.g. `./scripts/up.sh | head`) must not kill a launcher half-way.
for (const stream of [process.stdout, process.stderr]) stream.on("error", () => {});

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof UsageError) {
      console.error(err.message);
      process.exit(2);
    }
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  },
);
