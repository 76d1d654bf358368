/**
 * What every service's main.ts does: read the config, connect, open the site, add the micro service
 * with the standard metadata, run until SIGTERM/SIGINT, then drain.
 */
import { readFileSync } from "node:fs";
import type { NatsConnection } from "@nats-io/nats-core";
import { type Service, Svcm } from "@nats-io/services";
import { type Config, ConfigError, loadConfig, usage } from "./config.ts";
import { connectNats } from "./connect.ts";
import { type Logger, createLogger } from "./logger.ts";
import { type SiteHandles, StreamDriftError, openSite } from "./site.ts";
import { type ServiceKind, ServiceName } from "./subjects.ts";

/** The package version: the version every service reports in the micro protocol. */
export const VERSION: string = packageVersion();

/** The version in the repository's package.json (found upwards: sources or dist/). */
function packageVersion(): string {
  for (const rel of ["../../package.json", "../../../package.json"]) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), "utf8")) as {
        name?: string;
        version: string;
      };
      if (pkg.name === "nats-kv-syncd") return pkg.version;
    } catch {
      // not there: try the next
    }
  }
  throw new Error("package.json of nats-kv-syncd not found");
}

/** A server URL with any user/password in it replaced, for logs. */
export function maskUrl(url: string): string {
  return url.replace(/^([a-z+]+:\/\/)[^@/]*@/i, "$1[redacted]@");
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
  let nc: NatsConnection;
  try {
    nc = await connectNats(config, `${ServiceName[kind]}-${config.site}-${config.instance}`);
  } catch (err) {
    log.fatal(
      { err: { message: (err as Error).message }, servers: config.natsUrl.map(maskUrl) },
      "cannot connect to NATS",
    );
    process.exit(1);
  }
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect" || s.type === "reconnect")
        log.warn({ status: s.type }, "connection status");
    }
  })();
  let site: SiteHandles | undefined;
  // a JetStream that is still electing its leaders (a fresh or recovering cluster) answers with
  // timeouts for a while: opening the site is idempotent, so try again
  for (let attempt = 1; !site; attempt++) {
    try {
      site = await openSite(nc, config, log);
    } catch (err) {
      refuseOnDrift(err, log);
      if (attempt >= 10) throw err;
      log.warn({ err, attempt }, "cannot open the site's JetStream state yet; retrying");
      await new Promise((r) => setTimeout(r, 1000 * attempt));
    }
  }
  const service = await new Svcm(nc).add({
    name: ServiceName[kind],
    version: VERSION,
    description: opts.description,
    metadata: serviceMetadata(config),
    queue: "syncd",
    ...(opts.statsData
      ? { statsHandler: async (ep) => opts.statsData?.((ep as unknown as { name: string }).name) ?? null }
      : {}),
  });
  let running: Running;
  try {
    running = await opts.wire({ config, log, nc, site, service });
  } catch (err) {
    refuseOnDrift(err, log);
    throw err;
  }
  log.info({ id: service.info().id }, "ready");
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "stopping");
    const timer = setTimeout(() => process.exit(0), 5000);
    try {
      await running.stop();
      await service.stop();
      await nc.drain();
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
