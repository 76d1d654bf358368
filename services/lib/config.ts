/**
 * Service configuration from flags, then environment, then defaults. Credentials and TLS come only
 * from here, never from the op stream.
 */
import { hostname } from "node:os";
import { parseArgs } from "node:util";
import { ClockMode, DEFAULT_MAX_CLOCK_JUMP } from "./clock-rules.ts";
import { ConnOptionsError, connParseOptions, connUsage, resolveConnOptions } from "./connect.ts";
import { MESH_NAME, useMesh } from "./subjects.ts";

/** Everything a service of one site needs to know. */
export type Config = {
  natsUrl: string[];
  site: string;
  /** the mesh namespace (undefined: the default mesh); services/lib/subjects.ts names everything by it */
  mesh?: string;
  nodeId: string;
  domain: string;
  /** the hub's JetStream domain: where the aggregate stream lives */
  hubDomain: string;
  /** replicas of everything the services create at the site; 0: the replicas of the first data bucket */
  replicas: number;
  /** replicas of the hub's aggregate stream when a service creates it */
  hubReplicas: number;
  buckets: string[];
  clock: ClockMode;
  maxClockSkewMs: number;
  /** Lamport: how far one received ts may be above the site's clock */
  maxClockJump: number;
  /** keys of `_meta` each watcher and merger keeps in memory, per bucket */
  metaCacheMax: number;
  reconcileIntervalMs: number;
  logLevel: string;
  instance: string;
  auth: {
    user?: string;
    password?: string;
    token?: string;
    creds?: string;
    nkeySeedFile?: string;
    tlsCa?: string;
    tlsCert?: string;
    tlsKey?: string;
  };
  /**
   * stream limits: `opsMaxAgeMs` bounds the ingress (hand-made ops, journal) only, the op logs are
   * compacted per key; byte limits 0 = derived from the JetStream account limits (see site.ts)
   */
  limits: {
    opsMaxAgeMs: number;
    opsMaxBytes: number;
    hubMaxBytes: number;
    dlqMaxMsgs: number;
    conflictsMaxMsgs: number;
    conflictsMaxAgeMs: number;
  };
  /** port of /metrics, /healthz and /readyz (0 = any free port); undefined = no HTTP server */
  httpPort?: number;
  /** address the HTTP server listens on */
  httpHost: string;
};

/** The service flags (the connection flags are CONN_FLAGS of connect.ts). */
const flags = {
  site: { env: "SYNCD_SITE", help: "site name (letters, digits, - and _); the JetStream domain by default" },
  mesh: {
    env: "SYNCD_MESH",
    help: "mesh namespace: meshes sharing a hub see nothing of each other (default: none)",
  },
  "node-id": { env: "SYNCD_NODE_ID", help: "node id in versions (default site-<site>)" },
  domain: { env: "SYNCD_DOMAIN", help: "the site's JetStream domain (default: the site name)" },
  "hub-domain": { env: "SYNCD_HUB_DOMAIN", help: "the hub's JetStream domain", def: "hub" },
  replicas: {
    env: "SYNCD_REPLICAS",
    help: "replicas of the streams and buckets the services create (default: the data bucket's)",
  },
  "hub-replicas": {
    env: "SYNCD_HUB_REPLICAS",
    help: "replicas of the hub's aggregate stream when a service creates it",
    def: "1",
  },
  bucket: { env: "SYNCD_BUCKETS", help: "replicated KV bucket(s), comma separated", def: "config" },
  clock: { env: "SYNCD_CLOCK", help: "hlc (default) or lamport", def: "hlc" },
  "max-clock-skew": {
    env: "SYNCD_MAX_CLOCK_SKEW",
    help: "HLC: refuse ts further ahead than this many ms",
    def: "60000",
  },
  "max-clock-jump": {
    env: "SYNCD_MAX_CLOCK_JUMP",
    help: "Lamport: refuse (park) a ts more than this far above the site's clock",
    def: String(DEFAULT_MAX_CLOCK_JUMP),
  },
  "meta-cache-max": {
    env: "SYNCD_META_CACHE_MAX",
    help: "keys of <bucket>_meta a watcher or merger keeps in memory per bucket (bounds its memory)",
    def: "100000",
  },
  "reconcile-interval": {
    env: "SYNCD_RECONCILE_INTERVAL",
    help: "seconds between anti-entropy runs, 0 = off",
    def: "300",
  },
  "log-level": { env: "LOG_LEVEL", help: "pino level", def: "info" },
  instance: { env: "SYNCD_INSTANCE", help: "instance label for logs and metadata (default: hostname-pid)" },
  "http-port": {
    env: "SYNCD_HTTP_PORT",
    help: "serve /metrics, /healthz, /readyz on this port (0 = any free port; default: no HTTP)",
  },
  "http-host": { env: "SYNCD_HTTP_HOST", help: "address the HTTP port listens on", def: "0.0.0.0" },
  "ops-max-age": {
    env: "SYNCD_OPS_MAX_AGE",
    help: "seconds hand-made ops and journal records are kept in the ingress stream",
    def: "604800",
  },
  "ops-max-bytes": {
    env: "SYNCD_OPS_MAX_BYTES",
    help: "byte limit of each op stream of the site, 0 = derived from the JetStream limits",
    def: "0",
  },
  "hub-max-bytes": {
    env: "SYNCD_HUB_MAX_BYTES",
    help: "byte limit of the hub's aggregate stream when a service creates it, 0 = derived",
    def: "0",
  },
  "dlq-max-msgs": { env: "SYNCD_DLQ_MAX_MSGS", help: "dead-letter stream size", def: "10000" },
  "conflicts-max-msgs": { env: "SYNCD_CONFLICTS_MAX_MSGS", help: "conflict-log stream size", def: "100000" },
  "conflicts-max-age": {
    env: "SYNCD_CONFLICTS_MAX_AGE",
    help: "seconds conflict records are kept",
    def: "2592000",
  },
} as const satisfies Record<string, { env: string; help: string; def?: string }>;
type Flag = keyof typeof flags;

/** The usage text of every service. */
export function usage(service: string): string {
  const lines = Object.entries(flags).map(
    ([k, v]) => `  --${k.padEnd(20)} ${v.help} [$${v.env}]${"def" in v ? ` (default ${v.def})` : ""}`,
  );
  return `usage: ${service} --site <site> [options]\n${lines.join("\n")}\nconnection (natscli spellings; a context only by --context/NATS_CONTEXT):\n${connUsage(26).join("\n")}\n  -h, --help                 this text`;
}

/** Thrown for a bad flag or value: the entry point prints it with the usage and exits 2. */
export class ConfigError extends Error {}

const TOKEN = /^[A-Za-z0-9_-]+$/;

function intOf(name: Flag, v: string, min: number): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min)
    throw new ConfigError(`--${name} must be an integer >= ${min}, got ${v}`);
  return n;
}

function portOf(name: Flag, v: string): number {
  const n = intOf(name, v, 0);
  if (n > 65535) throw new ConfigError(`--${name} must be a port (0-65535), got ${v}`);
  return n;
}

/** Parse argv and env into a Config (throws ConfigError); the mesh namespace is put in use (subjects.ts `useMesh`). */
export function loadConfig(
  argv: string[] = process.argv.slice(2),
  env: NodeJS.ProcessEnv = process.env,
): Config {
  const options = Object.fromEntries(Object.keys(flags).map((k) => [k, { type: "string" as const }]));
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: { ...options, ...connParseOptions(), help: { type: "boolean", short: "h" } },
      strict: true,
    }));
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  if (values.help) throw new ConfigError("help");
  const get = (k: Flag): string | undefined => {
    const x = values[k];
    const v = typeof x === "string" ? x : env[flags[k].env];
    if (v !== undefined && v !== "") return v;
    const f = flags[k];
    return "def" in f ? f.def : undefined;
  };
  const site = get("site");
  if (!site) throw new ConfigError("--site (or SYNCD_SITE) is required");
  if (!TOKEN.test(site)) throw new ConfigError(`--site must match ${TOKEN}, got ${site}`);
  const mesh = get("mesh");
  if (mesh !== undefined && !MESH_NAME.test(mesh))
    throw new ConfigError(`--mesh must match ${MESH_NAME}, got ${mesh}`);
  const buckets = (get("bucket") ?? "")
    .split(",")
    .map((b) => b.trim())
    .filter(Boolean);
  if (buckets.length === 0) throw new ConfigError("--bucket needs at least one bucket");
  for (const b of buckets)
    if (!TOKEN.test(b)) throw new ConfigError(`bucket name must match ${TOKEN}, got ${b}`);
  const clock = get("clock");
  if (clock !== ClockMode.hlc && clock !== ClockMode.lamport)
    throw new ConfigError(`--clock must be hlc or lamport, got ${clock}`);
  const domain = get("domain") ?? site;
  if (!TOKEN.test(domain)) throw new ConfigError(`--domain must match ${TOKEN}, got ${domain}`);
  const hubDomain = get("hub-domain")!;
  if (!TOKEN.test(hubDomain)) throw new ConfigError(`--hub-domain must match ${TOKEN}, got ${hubDomain}`);
  if (hubDomain === domain)
    throw new ConfigError(`--hub-domain must differ from the site's domain ${domain}`);
  const replicasOf = (f: Flag, v: string | undefined): number => {
    if (v === undefined) return 0;
    const n = intOf(f, v, 1);
    if (n > 5) throw new ConfigError(`--${f} must be 1..5, got ${v}`);
    return n;
  };
  let conn: ReturnType<typeof resolveConnOptions>;
  try {
    conn = resolveConnOptions(values, env, { selectedContext: false });
  } catch (err) {
    if (err instanceof ConnOptionsError) throw new ConfigError(err.message);
    throw err;
  }
  const { servers, nkey, ...rest } = conn;
  const auth: Config["auth"] = { ...rest, ...(nkey ? { nkeySeedFile: nkey } : {}) };
  const httpPortText = get("http-port");
  useMesh(mesh);
  return {
    natsUrl: servers,
    site,
    ...(mesh !== undefined ? { mesh } : {}),
    nodeId: get("node-id") ?? `site-${site}`,
    domain,
    hubDomain,
    replicas: replicasOf("replicas", get("replicas")),
    hubReplicas: replicasOf("hub-replicas", get("hub-replicas")),
    buckets,
    clock,
    maxClockSkewMs: intOf("max-clock-skew", get("max-clock-skew")!, 0),
    maxClockJump: intOf("max-clock-jump", get("max-clock-jump")!, 1),
    metaCacheMax: intOf("meta-cache-max", get("meta-cache-max")!, 1),
    reconcileIntervalMs: intOf("reconcile-interval", get("reconcile-interval")!, 0) * 1000,
    logLevel: get("log-level")!,
    instance: get("instance") ?? `${hostname()}-${process.pid}`,
    auth,
    limits: {
      opsMaxAgeMs: intOf("ops-max-age", get("ops-max-age")!, 1) * 1000,
      opsMaxBytes: intOf("ops-max-bytes", get("ops-max-bytes")!, 0),
      hubMaxBytes: intOf("hub-max-bytes", get("hub-max-bytes")!, 0),
      dlqMaxMsgs: intOf("dlq-max-msgs", get("dlq-max-msgs")!, 1),
      conflictsMaxMsgs: intOf("conflicts-max-msgs", get("conflicts-max-msgs")!, 1),
      conflictsMaxAgeMs: intOf("conflicts-max-age", get("conflicts-max-age")!, 1) * 1000,
    },
    ...(httpPortText !== undefined ? { httpPort: portOf("http-port", httpPortText) } : {}),
    httpHost: get("http-host")!,
  };
}

/** A tunable integer from the environment (`def` when unset); throws a clear error below `min` or not an integer. */
export function envInt(env: NodeJS.ProcessEnv, name: string, def: number, min: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return def;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < min)
    throw new Error(`${name} must be an integer >= ${min}, got ${raw}`);
  return n;
}
