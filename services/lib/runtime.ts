/**
 * What every service's main.ts does: read the config, connect, open the site, add the micro service
 * with the standard metadata, run until SIGTERM/SIGINT, then drain. `runServices` does the same for
 * several kinds in one process (the site agent): one connection, one set of site handles, one
 * `_meta` cache per bucket, one metrics registry and one http port, shared by every service of the
 * process; still one micro service per kind. The `_meta` cache follows `_meta` through one watch per
 * bucket (meta-watch.ts, keyed by the site's `_meta` handle); the reconciler's version index reads it
 * on demand (reconciler/versions.ts).
 */
import { createRequire } from "node:module";
import path from "node:path";
import type { NatsConnection } from "@nats-io/nats-core";
import type { Service, ServiceConfig } from "@nats-io/services";
import { type Config, ConfigError, loadConfig, usage } from "./config.ts";
import { connectNats } from "./connect.ts";
import { health } from "./health.ts";
import { type HttpServer, type ProbeResult, startHttp } from "./http.ts";
import { startIdleGc } from "./idle-gc.ts";
import { isNatsError, isTransientNatsError } from "./jserrors.ts";
import { type Logger, createLogger } from "./logger.ts";
import { CachedMetaStore } from "./meta-cache.ts";
import { METRIC_NAMES, Metrics, registerConditions } from "./metrics.ts";
import { type SiteHandles, StreamDriftError, openSite } from "./site.ts";
import { type ServiceKind, ServiceName } from "./subjects.ts";
import { VERSION } from "./version.ts";

/** The package version: the version every service reports in the micro protocol. */
export { VERSION };

/** A server URL with any user/password in it replaced, for logs. */
export function maskUrl(url: string): string {
  return url.replace(/^([a-z+]+:\/\/)[^@/]*@/i, "$1[redacted]@");
}

/** STATS data of an endpoint that has some, with the service's health conditions added. */
export function withConditions(data: unknown, service?: string): unknown {
  if (data === null || data === undefined || typeof data !== "object" || Array.isArray(data))
    return data ?? null;
  return { ...data, conditions: health.list(service) };
}

/** What a service's wiring gets. */
export type ServiceContext = {
  config: Config;
  log: Logger;
  nc: NatsConnection;
  site: SiteHandles;
  service: Service;
  /** the process's `_meta` cache of a bucket (started on first use, shared by the services of the process) */
  metaCache: (bucket: string) => Promise<CachedMetaStore>;
  /** the process's metrics: the wiring registers its own, read from its counts at scrape time */
  metrics: Metrics;
};

/**
 * What a service's wiring returns: how to stop its background work, and the `data` of an endpoint's
 * micro STATS (the counters of this wired instance).
 */
export type Running = { stop: () => Promise<void>; statsData?: (endpoint: string) => unknown };

/** A durable consumer a service needs: /readyz fails while it is missing. */
export type NeededConsumer = { stream: string; durable: string };

/** One kind of service: what `runService` / `runServices` add and wire. */
export type ServiceDef = {
  kind: ServiceKind;
  description: string;
  wire: (ctx: ServiceContext) => Promise<Running>;
  /** STATS data for a wiring that does not return its own */
  statsData?: (endpoint: string) => unknown;
  /** the durable consumers the service works through */
  consumers?: (config: Config) => NeededConsumer[];
};

/** One watch-fed `_meta` cache per bucket, created on first use; `stop` ends every watch. */
export class SharedMetaCaches {
  private readonly caches = new Map<string, Promise<CachedMetaStore>>();
  constructor(
    private readonly site: SiteHandles,
    private readonly log: Logger,
    private readonly opts: { maxEntries?: number } = {},
  ) {}

  /** The started cache of `bucket`. */
  get(bucket: string): Promise<CachedMetaStore> {
    let c = this.caches.get(bucket);
    if (!c) {
      const kv = this.site.metas.get(bucket);
      if (!kv) return Promise.reject(new Error(`bucket ${bucket} is not one of this site's buckets`));
      const cache = new CachedMetaStore(kv, this.log.child({ bucket }), this.opts);
      // a start that failed (a request timed out) is not kept: the next call starts it again
      const started: Promise<CachedMetaStore> = cache.start().then(
        () => cache,
        (err: unknown) => {
          cache.stop();
          if (this.caches.get(bucket) === started) this.caches.delete(bucket);
          throw err;
        },
      );
      c = started;
      this.caches.set(bucket, c);
    }
    return c;
  }

  /** Stop every watch. */
  async stop(): Promise<void> {
    for (const c of this.caches.values()) (await c.catch(() => undefined))?.stop();
  }
}

/**
 * Errors the process went on after, by where they surfaced (`syncd_process_errors_total{origin}`):
 * a NATS request of a service's wiring that failed and was tried again (startup), a NATS error thrown
 * where nothing catches it (uncaught), a rejection nothing handles (rejection).
 */
export const processErrors = { startup: 0, uncaught: 0, rejection: 0 };

type ServiceImpl = Service & { handlers: unknown[]; start(): Promise<Service> };
let serviceImplClass: (new (nc: NatsConnection, config: ServiceConfig) => ServiceImpl) | undefined;

/**
 * A micro service that is not announced yet: endpoints added to it subscribe (and answer) at once,
 * while `$SRV.PING`/`INFO`/`STATS` get no answer from it until `announce()`. Wire, then announce: a
 * service that answers PING has every endpoint (what `Svcm.add` cannot do: it starts the service
 * first). @nats-io/services does not export its ServiceImpl, whose `start()` subscribes the control
 * subjects and, again, every endpoint in `handlers`: `announce` hands it none.
 */
export function unannouncedService(
  nc: NatsConnection,
  config: ServiceConfig,
): { service: Service; announce: () => Promise<void> } {
  if (!serviceImplClass) {
    const require = createRequire(import.meta.url);
    const lib = path.dirname(require.resolve("@nats-io/services"));
    serviceImplClass = (require(path.join(lib, "service.js")) as { ServiceImpl: typeof serviceImplClass })
      .ServiceImpl;
  }
  const impl = new serviceImplClass!(nc, config);
  return {
    service: impl,
    announce: async () => {
      const endpoints = impl.handlers;
      impl.handlers = [];
      try {
        await impl.start();
      } finally {
        impl.handlers = [...endpoints, ...impl.handlers];
      }
    },
  };
}

/** The metadata every instance announces (micro metadata values are strings). */
export function serviceMetadata(config: Config): Record<string, string> {
  return {
    site: config.site,
    node_id: config.nodeId,
    domain: config.domain,
    buckets: config.buckets.join(","),
    clock: config.clock,
    instance: config.instance,
    ...(config.mesh !== undefined ? { mesh: config.mesh } : {}),
  };
}

/**
 * Run one service process. `wire` adds the endpoints and starts the background work.
 * `statsData(endpoint)` fills the `data` field of the endpoint's micro STATS.
 */
export async function runService(kind: ServiceKind, opts: Omit<ServiceDef, "kind">): Promise<void> {
  await runServices([{ kind, ...opts }], ServiceName[kind]);
}

/**
 * How long a stop may take before the process exits anyway: each consumer lets its last pull
 * requests age past the server's grace (~2 s, see consume.ts) before it drains.
 */
export const STOP_TIMEOUT_MS = 8000;

/**
 * Run several kinds of service in this process (`name` labels the process: logs, connection name,
 * usage, the metrics' `service` label), in the order given, sharing one connection, the site
 * handles, the `_meta` caches, the metrics and the http port (/healthz, /readyz over every service).
 * Each kind is its own micro service with the standard metadata; more instances of any kind can run
 * anywhere else. On SIGTERM/SIGINT stops all but the first at once, then the first, then drains the
 * connection.
 */
export async function runServices(defs: ServiceDef[], name: string, moreUsage = ""): Promise<void> {
  let config: Config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      const help = err.message === "help";
      (help ? console.log : console.error)(
        `${help ? "" : `error: ${err.message}\n`}${usage(name)}${moreUsage}`,
      );
      process.exit(help ? 0 : 2);
    }
    throw err;
  }
  const single = defs.length === 1;
  const log = createLogger({
    service: name,
    site: config.site,
    instance: config.instance,
    level: config.logLevel,
  });
  process.on("unhandledRejection", (err) => {
    processErrors.rejection++;
    log.error({ err }, "unhandled rejection");
  });
  // the heap a catch-up grows is given back once the process idles (idle-gc.ts); SYNCD_IDLE_GC=0: off
  if (process.env.SYNCD_IDLE_GC !== "0")
    startIdleGc({ onCollect: (c) => log.info(c, "idle gc: gave back the heap a busy period grew") });
  // a NATS error thrown where nothing catches it failed one request or subscription, not the
  // process: counted and logged, the services go on (unless the connection is closed for good);
  // anything else is a bug whose state is unknown: exit, the supervisor restarts (nothing is lost, I6)
  process.on("uncaughtException", (err) => {
    if (isNatsError(err) && state.nc?.isClosed() !== true) {
      processErrors.uncaught++;
      log.error({ err }, "uncaught NATS error: counted, going on");
      return;
    }
    log.fatal({ err }, "uncaught exception, exiting");
    process.exit(1);
  });
  const { auth: _auth, ...shown } = config;
  log.info(
    {
      config: { ...shown, natsUrl: shown.natsUrl.map(maskUrl) },
      ...(single ? {} : { services: defs.map((d) => ServiceName[d.kind]) }),
    },
    "starting",
  );
  // without an http port nobody scrapes: no process observers then
  const metrics = new Metrics(
    { service: name, site: config.site, instance: config.instance },
    { processMetrics: config.httpPort !== undefined },
  );
  const state: { nc?: NatsConnection; connected: boolean; site?: SiteHandles; wired: boolean } = {
    connected: false,
    wired: false,
  };
  const healthz = async (): Promise<ProbeResult> => {
    const nats = !state.nc
      ? "connecting"
      : state.nc.isClosed()
        ? "closed"
        : state.connected
          ? true
          : "disconnected";
    return { ok: nats === true, checks: { process: true, nats } };
  };
  const readyz = async (): Promise<ProbeResult> => {
    const h = await healthz();
    const checks: ProbeResult["checks"] = { ...h.checks, wired: state.wired || "not yet" };
    if (h.ok && state.wired && state.site) {
      for (const c of defs.flatMap((d) => d.consumers?.(config) ?? [])) {
        checks[`consumer ${c.stream}/${c.durable}`] = await state.site.jsm.consumers
          .info(c.stream, c.durable)
          .then(
            () => true as const,
            (err: unknown) => (err as Error).message,
          );
      }
    }
    return { ok: Object.values(checks).every((v) => v === true), checks };
  };
  metrics.gaugeFrom(METRIC_NAMES.info, "1 per service process", ["version"], () => [
    { labels: { version: VERSION }, value: 1 },
  ]);
  metrics.gaugeFrom(METRIC_NAMES.natsConnected, "1 while connected to NATS", [], async () =>
    (await healthz()).ok ? 1 : 0,
  );
  metrics.gaugeFrom(METRIC_NAMES.ready, "1 while /readyz answers ok", [], async () =>
    (await readyz()).ok ? 1 : 0,
  );
  registerConditions(metrics);
  metrics.counterFrom(METRIC_NAMES.processErrors, "errors the process went on after", ["origin"], () =>
    Object.entries(processErrors).map(([origin, value]) => ({ labels: { origin }, value })),
  );
  let http: HttpServer | undefined;
  if (config.httpPort !== undefined) {
    try {
      http = await startHttp(
        config.httpHost,
        config.httpPort,
        { healthz, readyz, metrics: () => metrics.scrape() },
        log,
      );
      log.info({ host: config.httpHost, port: http.port }, "http port open: /metrics /healthz /readyz");
    } catch (err) {
      log.fatal({ err, host: config.httpHost, port: config.httpPort }, "cannot open the http port");
      process.exit(1);
    }
  }
  let nc: NatsConnection;
  try {
    nc = await connectNats(config, `${name}-${config.site}-${config.instance}`);
    state.nc = nc;
    state.connected = true;
  } catch (err) {
    log.fatal(
      { err: { message: (err as Error).message }, servers: config.natsUrl.map(maskUrl) },
      "cannot connect to NATS",
    );
    process.exit(1);
  }
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect") state.connected = false;
      if (s.type === "reconnect") state.connected = true;
      if (s.type === "disconnect" || s.type === "reconnect")
        log.warn({ status: s.type }, "connection status");
    }
  })();
  // a start-up that fails is logged and exits here: a rejection of runServices would reach the
  // entry module's top-level await, which Node reports as an uncaught exception
  const started: { service: Service; running: Running }[] = [];
  const caches = await startAll(defs, { config, log, nc, metrics, single, state, started }).catch(
    (err: unknown) => {
      log.fatal({ err }, "cannot start");
      return process.exit(1);
    },
  );
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "stopping");
    const timer = setTimeout(() => process.exit(0), STOP_TIMEOUT_MS);
    try {
      state.wired = false;
      // the first kind (the clock, which the others call) stops last; the others at once: each
      // consumer loop may wait ~2 s for its last pull requests to age (consume.ts)
      const [first, ...rest] = started;
      const stopOne = async (s: (typeof started)[number]) => {
        await s.running.stop();
        await s.service.stop();
      };
      await Promise.all(rest.map(stopOne));
      if (first) await stopOne(first);
      await caches.stop();
      await nc.drain();
      await http?.close();
    } catch (err) {
      log.warn({ err }, "error while stopping");
    }
    clearTimeout(timer);
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}

/** A stream whose configured limits the server cannot apply: refuse to start, saying why (exit 2). */
function refuseOnDrift(err: unknown, log: Logger): void {
  if (!(err instanceof StreamDriftError)) return;
  log.fatal(
    { err: { message: err.message } },
    "refusing to start: a stream's config cannot be brought to the configured one",
  );
  process.exit(2);
}

/** What {@link startAll} needs of runServices. */
type StartArgs = {
  config: Config;
  log: Logger;
  nc: NatsConnection;
  metrics: Metrics;
  single: boolean;
  state: { site?: SiteHandles; wired: boolean };
  started: { service: Service; running: Running }[];
};

/** Open the site, then wire and announce each service in order; returns the shared `_meta` caches. */
async function startAll(defs: ServiceDef[], a: StartArgs): Promise<SharedMetaCaches> {
  const { config, log, nc, metrics, single, state, started } = a;
  let site: SiteHandles | undefined;
  // a JetStream that is still electing its leaders (a fresh or recovering cluster) answers with
  // timeouts for a while: opening the site is idempotent, so try again
  for (let attempt = 1; !site; attempt++) {
    try {
      site = await openSite(nc, config, log);
    } catch (err) {
      refuseOnDrift(err, log);
      if (attempt >= 10) throw err;
      processErrors.startup++;
      log.warn({ err, attempt }, "cannot open the site's JetStream state yet; retrying");
      await new Promise((r) => setTimeout(r, 1000 * attempt));
    }
  }
  state.site = site;
  const caches = new SharedMetaCaches(site, log, { maxEntries: config.metaCacheMax });
  for (const def of defs) {
    // in the agent every line names its service; alone, the root logger already does
    const slog = single ? log : log.child({ svc: ServiceName[def.kind] });
    slog.info("wiring");
    let running: Running | undefined;
    let service: Service | undefined;
    // a request of the wiring that times out (a server paused or overloaded, a JetStream electing
    // its leaders) is tried again with a new, unannounced service; anything else ends the start-up
    for (let attempt = 1; !running; attempt++) {
      const wired: { running?: Running } = {};
      const s = unannouncedService(nc, {
        name: ServiceName[def.kind],
        version: VERSION,
        description: def.description,
        metadata: serviceMetadata(config),
        queue: "syncd",
        statsHandler: async (ep) => {
          const endpoint = (ep as unknown as { name: string }).name;
          return withConditions(
            (wired.running?.statsData ?? def.statsData)?.(endpoint),
            ServiceName[def.kind],
          );
        },
      });
      try {
        wired.running = await def.wire({
          config,
          log: slog,
          nc,
          site,
          service: s.service,
          metaCache: (bucket) => caches.get(bucket),
          metrics,
        });
      } catch (err) {
        refuseOnDrift(err, log);
        await s.service.stop().catch(() => {});
        if (!isTransientNatsError(err)) throw err;
        processErrors.startup++;
        const retryMs = Math.min(10_000, 1000 * attempt);
        slog.warn({ err, attempt, retry_ms: retryMs }, "cannot wire the service yet; retrying");
        await new Promise((r) => setTimeout(r, retryMs));
        continue;
      }
      // PING answers from here on: every endpoint is in place
      await s.announce();
      running = wired.running;
      service = s.service;
    }
    started.push({ service: service!, running });
    slog.info({ id: service!.info().id }, "ready");
  }
  state.wired = true;
  return caches;
}
