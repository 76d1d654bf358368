/**
 * What every service's main.ts does: read the config, connect, open the site, add the micro service
 * with the standard metadata, run until SIGTERM/SIGINT, then drain.
 */
import type { NatsConnection } from "@nats-io/nats-core";
import { type Service, Svcm } from "@nats-io/services";
import { type Config, ConfigError, loadConfig, usage } from "./config.ts";
import { connectNats } from "./connect.ts";
import { health } from "./health.ts";
import { type HttpServer, type ProbeResult, startHttp } from "./http.ts";
import { type Logger, createLogger } from "./logger.ts";
import { METRIC_NAMES, Metrics, registerConditions } from "./metrics.ts";
import { type SiteHandles, openSite } from "./site.ts";
import { type ServiceKind, ServiceName } from "./subjects.ts";
import { VERSION } from "./version.ts";

/** The package version: the version every service reports in the micro protocol. */
export { VERSION };

/** A server URL with any user/password in it replaced, for logs. */
export function maskUrl(url: string): string {
  return url.replace(/^([a-z+]+:\/\/)[^@/]*@/i, "$1[redacted]@");
}

/** STATS data of an endpoint that has some, with the process's health conditions added. */
export function withConditions(data: unknown): unknown {
  if (data === null || data === undefined || typeof data !== "object" || Array.isArray(data))
    return data ?? null;
  return { ...data, conditions: health.list() };
}

/** What a service's wiring gets. */
export type ServiceContext = {
  config: Config;
  log: Logger;
  nc: NatsConnection;
  site: SiteHandles;
  service: Service;
};

/** What a service's wiring returns: how to stop its background work. */
export type Running = { stop: () => Promise<void> };

/** A durable consumer a service needs: /readyz fails while it is missing. */
export type NeededConsumer = { stream: string; durable: string };

/** The metadata every instance announces (micro metadata values are strings). */
export function serviceMetadata(config: Config): Record<string, string> {
  return {
    site: config.site,
    node_id: config.nodeId,
    domain: config.domain,
    buckets: config.buckets.join(","),
    clock: config.clock,
    instance: config.instance,
  };
}

/**
 * Run one service process. `wire` adds the endpoints and starts the background work.
 * `statsData(endpoint)` fills the `data` field of the endpoint's micro STATS.
 */
export async function runService(
  kind: ServiceKind,
  opts: {
    description: string;
    wire: (ctx: ServiceContext) => Promise<Running>;
    statsData?: (endpoint: string) => unknown;
    /** register the service's metrics (read from its counts at scrape time) */
    metrics?: (m: Metrics, ctx: ServiceContext) => void;
    /** the durable consumers the service works through */
    consumers?: (config: Config) => NeededConsumer[];
  },
): Promise<void> {
  let config: Config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      const help = err.message === "help";
      (help ? console.log : console.error)(
        `${help ? "" : `error: ${err.message}\n`}${usage(ServiceName[kind])}`,
      );
      process.exit(help ? 0 : 2);
    }
    throw err;
  }
  const log = createLogger({
    service: ServiceName[kind],
    site: config.site,
    instance: config.instance,
    level: config.logLevel,
  });
  process.on("unhandledRejection", (err) => log.error({ err }, "unhandled rejection"));
  process.on("uncaughtException", (err) => {
    log.fatal({ err }, "uncaught exception, exiting");
    process.exit(1);
  });
  const { auth: _auth, ...shown } = config;
  log.info({ config: { ...shown, natsUrl: shown.natsUrl.map(maskUrl) } }, "starting");
  // without an http port nobody scrapes: no process observers then
  const metrics = new Metrics(
    { service: ServiceName[kind], site: config.site, instance: config.instance },
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
      for (const c of opts.consumers?.(config) ?? []) {
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
    nc = await connectNats(config, `${ServiceName[kind]}-${config.site}-${config.instance}`);
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
  const site = await openSite(nc, config, log);
  state.site = site;
  const service = await new Svcm(nc).add({
    name: ServiceName[kind],
    version: VERSION,
    description: opts.description,
    metadata: serviceMetadata(config),
    queue: "syncd",
    ...(opts.statsData
      ? {
          statsHandler: async (ep) =>
            withConditions(opts.statsData?.((ep as unknown as { name: string }).name)),
        }
      : {}),
  });
  const ctx: ServiceContext = { config, log, nc, site, service };
  const running = await opts.wire(ctx);
  opts.metrics?.(metrics, ctx);
  state.wired = true;
  log.info({ id: service.info().id }, "ready");
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "stopping");
    const timer = setTimeout(() => process.exit(0), 5000);
    try {
      state.wired = false;
      await running.stop();
      await service.stop();
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
