/**
 * What every service's main.ts does: read the config, connect, open the site, add the micro service
 * with the standard metadata, run until SIGTERM/SIGINT, then drain. `runServices` does the same for
 * several kinds in one process (the site agent): one connection, one set of site handles and one
 * `_meta` cache per bucket, shared by every service of the process; still one micro service per kind.
 */
import { readFileSync } from "node:fs";
import type { NatsConnection } from "@nats-io/nats-core";
import { type Service, Svcm } from "@nats-io/services";
import { type Config, ConfigError, loadConfig, usage } from "./config.ts";
import { connectNats } from "./connect.ts";
import { health } from "./health.ts";
import { type Logger, createLogger } from "./logger.ts";
import { CachedMetaStore } from "./meta-cache.ts";
import { type SiteHandles, openSite } from "./site.ts";
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
  /** the process's `_meta` cache of a bucket (started on first use, shared by the services of the process) */
  metaCache: (bucket: string) => Promise<CachedMetaStore>;
};

/**
 * What a service's wiring returns: how to stop its background work, and the `data` of an endpoint's
 * micro STATS (the counters of this wired instance).
 */
export type Running = { stop: () => Promise<void>; statsData?: (endpoint: string) => unknown };

/** One kind of service: what `runService` / `runServices` add and wire. */
export type ServiceDef = {
  kind: ServiceKind;
  description: string;
  wire: (ctx: ServiceContext) => Promise<Running>;
  /** STATS data for a wiring that does not return its own */
  statsData?: (endpoint: string) => unknown;
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
      c = cache.start().then(() => cache);
      this.caches.set(bucket, c);
    }
    return c;
  }

  /** Stop every watch. */
  async stop(): Promise<void> {
    for (const c of this.caches.values()) (await c.catch(() => undefined))?.stop();
  }
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
 * Run several kinds of service in this process (`name` labels the process: logs, connection name,
 * usage), in the order given, sharing one connection, the site handles and the `_meta` caches.
 * Each kind is its own micro service with the standard metadata; more instances of any kind can run
 * anywhere else. Stops them in reverse order on SIGTERM/SIGINT, then drains the connection.
 */
export async function runServices(defs: ServiceDef[], name: string): Promise<void> {
  let config: Config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      const help = err.message === "help";
      (help ? console.log : console.error)(`${help ? "" : `error: ${err.message}\n`}${usage(name)}`);
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
  process.on("unhandledRejection", (err) => log.error({ err }, "unhandled rejection"));
  process.on("uncaughtException", (err) => {
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
  let nc: NatsConnection;
  try {
    nc = await connectNats(config, `${name}-${config.site}-${config.instance}`);
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
  const site = await openSite(nc, config, log);
  const caches = new SharedMetaCaches(site, log, { maxEntries: config.metaCacheMax });
  const svcm = new Svcm(nc);
  const started: { service: Service; running: Running; log: Logger }[] = [];
  for (const def of defs) {
    // in the agent every line names its service; alone, the root logger already does
    const slog = single ? log : log.child({ svc: ServiceName[def.kind] });
    const wired: { running?: Running } = {};
    const service = await svcm.add({
      name: ServiceName[def.kind],
      version: VERSION,
      description: def.description,
      metadata: serviceMetadata(config),
      queue: "syncd",
      statsHandler: async (ep) => {
        const endpoint = (ep as unknown as { name: string }).name;
        return withConditions((wired.running?.statsData ?? def.statsData)?.(endpoint));
      },
    });
    const running = await def.wire({
      config,
      log: slog,
      nc,
      site,
      service,
      metaCache: (bucket) => caches.get(bucket),
    });
    wired.running = running;
    started.push({ service, running, log: slog });
    slog.info({ id: service.info().id }, "ready");
  }
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "stopping");
    const timer = setTimeout(() => process.exit(0), 5000);
    try {
      for (const s of [...started].reverse()) {
        await s.running.stop();
        await s.service.stop();
      }
      await caches.stop();
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
