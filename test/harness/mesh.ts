/**
 * The integration-test harness: a local hub + sites mesh on free ports in a temp dir, optionally with
 * the four services per site, plus polling helpers.
 *
 *   const mesh = await startMesh();                 // sites a, b with services, bucket "config"
 *   const kvA = await mesh.kv("a");
 *   await kvA.put("k", "v");
 *   await eventually(async () => assert.equal((await (await mesh.kv("b")).get("k"))?.string(), "v"));
 *   await mesh.stop();
 *
 * Every process it starts is killed when the test process exits, also on a crash. KEEP_MESH=1 keeps
 * the temp dir (logs, configs, JetStream data) after stop() and prints its path.
 */
import { mkdtempSync, rmSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { inspect } from "node:util";
import { type KV, Kvm } from "@nats-io/kv";
import type { ConnectionOptions, NatsConnection } from "@nats-io/nats-core";
import { connect } from "@nats-io/transport-node";
import { killAttachedSync, sleep } from "../../scripts/lib/proc.ts";
import {
  type Scale,
  type ServiceInstance,
  type ServiceKind,
  SiteServices,
  parseScale,
} from "../../scripts/lib/services.ts";
import {
  type CertFiles,
  Topology,
  ensureCerts,
  randomPassword,
  renderSiteUsersConf,
} from "../../scripts/lib/topology.ts";
import { openOrCreateKv } from "../../services/mod.ts";

// A service killed with messages in hand: they go to another instance after 5 s instead of 30
// (services/lib/consume.ts ACK_WAIT_MS), so that tests that kill services do not wait out the default.
process.env.SYNCD_ACK_WAIT_MS ??= "5000";

export { parseScale, sleep };
export type { CertFiles, ServiceInstance, ServiceKind, Scale };

export type MeshOptions = {
  /** site names (default ["a", "b"]) */
  sites?: string[];
  /** start the four services on every site (default true) */
  services?: boolean;
  /** instances per kind, e.g. "merger=3,watcher=2" or {merger: 3} (default 1 each) */
  scale?: string | Partial<Record<ServiceKind, number>>;
  /**
   * one agent process per site runs instance 1 of every kind (services/agent); further instances in
   * processes of their own (default: $SYNCD_TEST_AGENT === "1")
   */
  agent?: boolean;
  /** replicated buckets (default ["config"]) */
  buckets?: string[];
  /** extra args for every service, e.g. ["--reconcile-interval", "2"] */
  serviceArgs?: string[];
  /** more service flags for some sites only (e.g. `--mesh` for a second mesh on the same hub) */
  siteServiceArgs?: Record<string, string[]>;
  clock?: "hlc" | "lamport";
  /** LOG_LEVEL of the services (default $LOG_LEVEL or "info") */
  logLevel?: string;
  /** readiness timeout of the services in ms (default 30000) */
  readyTimeoutMs?: number;
  /**
   * Require auth on every site with deploy/nats/site-users.conf.template and these passwords: the
   * services run as user `syncd`, the harness's own connections (connect, kv, probes) as `admin`
   * unless connect() is given other credentials. `reader` (optional) is the read-only user's password
   * (default: a random one).
   */
  users?: { syncd: string; app: string; admin: string; reader?: string };
  /**
   * The secured variant (needs `users`): deploy/nats/hub-secure.conf.template and
   * site-secure.conf.template. TLS on every client port (the harness's and the services' connections
   * verify the servers with the CA) and mutual TLS on the leaf connections, certificates made by
   * scripts/gen-certs.sh in `<mesh dir>/certs`; the hub's client port takes only `admin` (password
   * `users.admin`), its leaf listener only user `leaf` (password `leafPassword`, default random).
   */
  tls?: boolean | { leafPassword?: string };
  /** the hub isolates leaf interest (Topology's `isolate`: true, false or "auto"; default $SYNCD_HUB_ISOLATE, else "auto": isolated on 2.12+) */
  isolate?: boolean | "auto";
};

export type MeshSite = {
  url: string;
  domain: string;
  nodeId: string;
  /** monitoring base URL (/leafz, /jsz, /healthz) */
  monitorUrl: string;
};

export type Mesh = {
  dir: string;
  hub: { url: string };
  sites: Record<string, MeshSite>;
  /** the underlying nats-server topology */
  topology: Topology;
  /** the TLS files of a `tls` mesh (undefined otherwise) */
  certs?: CertFiles;
  /** a new connection to a site's server (reconnects forever); closed by stop() */
  connect(site: string, opts?: Partial<ConnectionOptions>): Promise<NatsConnection>;
  /** a new connection to the hub; closed by stop() */
  connectHub(opts?: Partial<ConnectionOptions>): Promise<NatsConnection>;
  /** a site's bucket (created if missing), on one shared tracked connection per site */
  kv(site: string, bucket?: string): Promise<KV>;
  /** partition: every site keeps working alone */
  stopHub(): Promise<void>;
  /** heal: waits until every running site is connected again */
  startHub(): Promise<void>;
  /** outage of one site's nats-server (its services keep running and reconnect) */
  stopServer(site: string): Promise<void>;
  /**
   * restart it; waits for its leaf connection, for the test's connections to that site to reconnect
   * and for its running services to answer PING again
   */
  startServer(site: string): Promise<void>;
  addSite(
    name: string,
    opts?: { services?: boolean; scale?: string | Partial<Record<ServiceKind, number>> },
  ): Promise<MeshSite>;
  /** start (the missing) service instances of a site; waits until they answer PING */
  startServices(
    site: string,
    scale?: string | Partial<Record<ServiceKind, number>>,
  ): Promise<ServiceInstance[]>;
  stopServices(site: string): Promise<void>;
  /** the service instance handles of a site (kind, n, pid, stop(), kill9(), restart()) */
  services(site: string): ServiceInstance[];
  /** wait until every running service instance of the site (default: all sites) answers PING */
  waitServices(site?: string): Promise<void>;
  /** tails of the service logs of a site (default: all sites), for failure messages */
  logs(site?: string, lines?: number): string;
  stop(): Promise<void>;
};

/** Temp dirs of meshes not stopped yet: removed when the process exits (unless KEEP_MESH=1). */
const liveDirs = new Set<string>();
let dirHook = false;
function removeDirsAtExit(dir: string): void {
  liveDirs.add(dir);
  if (dirHook) return;
  dirHook = true;
  process.once("exit", () => {
    killAttachedSync(); // the servers first (scripts/lib/proc.ts's own exit hook may run later)
    if (process.env.KEEP_MESH === "1") return;
    for (const d of liveDirs) {
      try {
        rmSync(d, { recursive: true, force: true, maxRetries: 2 });
      } catch {
        /* a server still writing: leave it */
      }
    }
  });
}

/** Start a mesh; see {@link MeshOptions} for the defaults. */
export async function startMesh(opts: MeshOptions = {}): Promise<Mesh> {
  const siteNames = opts.sites ?? ["a", "b"];
  const withServices = opts.services ?? true;
  const buckets = opts.buckets ?? ["config"];
  const keep = process.env.KEEP_MESH === "1";
  const dir = mkdtempSync(path.join(os.tmpdir(), "syncd-mesh-"));
  removeDirsAtExit(dir);
  const users = opts.users;
  const adminAuth = users ? { user: "admin", pass: users.admin } : undefined;
  if (opts.tls && !users) throw new Error("startMesh: the tls option needs users");
  const certs = opts.tls ? ensureCerts(path.join(dir, "certs")) : undefined;
  const leafPassword =
    typeof opts.tls === "object" && opts.tls.leafPassword ? opts.tls.leafPassword : randomPassword();
  /** TLS options of every connection the harness makes */
  const tlsOpts = certs ? { tls: { caFile: certs.ca } } : {};
  const serviceArgs = [
    ...(users ? ["--user", "syncd", "--password", users.syncd] : []),
    ...(certs ? ["--tls-ca", certs.ca] : []),
    ...(opts.serviceArgs ?? []),
  ];
  const conns = new Set<NatsConnection>();
  const kvConns = new Map<string, NatsConnection>();
  const services = new Map<string, SiteServices>();
  let topology: Topology | undefined;

  const siteInfo = (t: Topology, s: string): MeshSite => {
    const st = t.site(s);
    return { url: st.url, domain: st.domain, nodeId: `site-${s}`, monitorUrl: st.httpUrl };
  };
  const siteServices = (s: string): SiteServices => {
    let ss = services.get(s);
    if (!ss) {
      const st = topo().site(s);
      ss = new SiteServices({
        site: s,
        natsUrl: st.url,
        buckets,
        nodeId: `site-${s}`,
        ...(opts.clock ? { clock: opts.clock } : {}),
        extraArgs: [...serviceArgs, ...(opts.siteServiceArgs?.[s] ?? [])],
        dir: st.dir,
        agent: opts.agent ?? process.env.SYNCD_TEST_AGENT === "1",
        ...(adminAuth
          ? {
              connect: () =>
                connect({ servers: st.url, name: `syncd-launcher-${s}`, ...adminAuth, ...tlsOpts }),
            }
          : {}),
        ...(opts.logLevel ? { logLevel: opts.logLevel } : {}),
        ...(opts.readyTimeoutMs ? { readyTimeoutMs: opts.readyTimeoutMs } : {}),
      });
      services.set(s, ss);
    }
    return ss;
  };
  const topo = (): Topology => {
    if (!topology) throw new Error("mesh is stopped");
    return topology;
  };
  const logs = (site?: string, lines = 30): string =>
    [...services.entries()]
      .filter(([s]) => site === undefined || s === site)
      .map(([, ss]) => ss.logs(lines))
      .join("\n");
  /** connection → the server it talks to and whether it is connected right now */
  const connState = new Map<NatsConnection, { servers: string; connected: boolean }>();
  const track = async (servers: string, o: Partial<ConnectionOptions> = {}): Promise<NatsConnection> => {
    const nc = await connect({
      servers,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      ...adminAuth,
      ...tlsOpts,
      ...o,
    });
    conns.add(nc);
    const st = { servers, connected: true };
    connState.set(nc, st);
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === "disconnect") st.connected = false;
        else if (s.type === "reconnect") st.connected = true;
      }
    })();
    void nc.closed().then(() => {
      conns.delete(nc);
      connState.delete(nc);
    });
    return nc;
  };
  /** After a server restart: requests made before a client has reconnected can get lost. */
  const waitReconnected = async (url: string): Promise<void> => {
    await waitFor(() => [...connState.values()].every((c) => c.servers !== url || c.connected), {
      timeout: 15000,
      interval: 20,
      message: `test connections to ${url} reconnected`,
    });
  };

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await Promise.all([...conns].map((nc) => nc.close().catch(() => {})));
    await Promise.all([...services.values()].map((s) => s.stop().catch(() => {})));
    await topology?.stop().catch(() => {});
    topology = undefined;
    liveDirs.delete(dir);
    if (keep) console.error(`KEEP_MESH=1: mesh dir kept at ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  };

  const mesh: Mesh = {
    dir,
    ...(certs ? { certs } : {}),
    hub: { url: "" },
    sites: {},
    get topology() {
      return topo();
    },
    connect: (site, o) => track(topo().site(site).url, { name: `test-${site}`, ...o }),
    connectHub: (o) => track(topo().hub.url, { name: "test-hub", ...o }),
    async kv(site, bucket = buckets[0] ?? "config") {
      let nc = kvConns.get(site);
      if (!nc || nc.isClosed()) {
        nc = await mesh.connect(site, { name: `test-kv-${site}` });
        kvConns.set(site, nc);
      }
      return openOrCreateKv(new Kvm(nc), bucket);
    },
    stopHub: () => topo().stopHub(),
    startHub: () => topo().startHub(),
    stopServer: (site) => topo().stopServer(site),
    async startServer(site) {
      await topo().startServer(site);
      await waitReconnected(topo().site(site).url);
      await services.get(site)?.waitReady();
    },
    async addSite(name, o = {}) {
      await topo().addSite(name);
      const info = siteInfo(topo(), name);
      mesh.sites[name] = info;
      if (o.services ?? withServices) await siteServices(name).start(parseScale(o.scale ?? opts.scale));
      return info;
    },
    startServices: (site, scale) => siteServices(site).start(parseScale(scale ?? opts.scale)),
    stopServices: async (site) => {
      await services.get(site)?.stop();
    },
    services: (site) => services.get(site)?.instances ?? [],
    async waitServices(site) {
      const list = site === undefined ? [...services.values()] : [siteServices(site)];
      await Promise.all(list.map((s) => s.waitReady()));
    },
    logs,
    stop,
  };

  try {
    topology = await Topology.start({
      sites: siteNames,
      dir,
      ...(opts.isolate !== undefined ? { isolate: opts.isolate } : {}),
      ...(users
        ? {
            auth: adminAuth,
            siteInclude: (site: string) =>
              renderSiteUsersConf({
                site,
                syncdPassword: users.syncd,
                appPassword: users.app,
                adminPassword: users.admin,
                ...(users.reader ? { readerPassword: users.reader } : {}),
              }),
          }
        : {}),
      ...(users && certs ? { secure: { certDir: certs.dir, adminPassword: users.admin, leafPassword } } : {}),
    });
    mesh.hub.url = topology.hub.url;
    for (const s of siteNames) mesh.sites[s] = siteInfo(topology, s);
    if (withServices) {
      const scale = parseScale(opts.scale);
      // Every site at once: each site's services create that site's buckets and streams.
      await Promise.all(siteNames.map((s) => siteServices(s).start(scale)));
    }
  } catch (err) {
    const tails = logs(undefined, 20);
    await stop();
    if (tails && err instanceof Error) err.message += `\n${tails}`;
    throw err;
  }
  return mesh;
}

export type WaitOptions = {
  /** ms (default 10000) */
  timeout?: number;
  /** ms between polls (default 50) */
  interval?: number;
  /** what was awaited, for the error */
  message?: string;
};

/**
 * Poll `fn` until it returns a truthy value and return that value. A throw counts as "not yet".
 * On timeout, throws with the message, the last value (or error) and the elapsed time.
 */
export async function waitFor<T>(
  fn: () => T | Promise<T>,
  o: WaitOptions = {},
): Promise<Exclude<T, null | undefined | false | 0 | "">> {
  const timeout = o.timeout ?? 10000;
  const interval = o.interval ?? 50;
  const t0 = Date.now();
  let last: unknown;
  let lastErr: unknown;
  for (;;) {
    try {
      last = await fn();
      lastErr = undefined;
      if (last) return last as Exclude<T, null | undefined | false | 0 | "">;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() - t0 >= timeout) {
      const what =
        lastErr !== undefined
          ? `last error: ${inspect(lastErr)}`
          : `last value: ${inspect(last, { depth: 4 })}`;
      throw new Error(`${o.message ?? "condition"} not met within ${timeout} ms; ${what}`);
    }
    await sleep(interval);
  }
}

/**
 * Retry an assertion block until it stops throwing; on timeout rethrow its last error (prefixed with
 * the message). Returns what the block returned.
 */
export async function eventually<T>(fn: () => T | Promise<T>, o: WaitOptions = {}): Promise<T> {
  const timeout = o.timeout ?? 10000;
  const interval = o.interval ?? 50;
  const t0 = Date.now();
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() - t0 >= timeout) {
        if (err instanceof Error) {
          err.message = `${o.message ? `${o.message}: ` : ""}still failing after ${timeout} ms: ${err.message}`;
          throw err;
        }
        throw new Error(`${o.message ?? "eventually"}: still failing after ${timeout} ms: ${inspect(err)}`);
      }
    }
    await sleep(interval);
  }
}
