/**
 * Service configuration from flags, then environment, then defaults. Credentials and TLS come only
 * from here, never from the op stream.
 */
import { hostname } from "node:os";
import { parseArgs } from "node:util";
import { ClockMode } from "./clock-rules.ts";

/** Everything a service of one site needs to know. */
export type Config = {
  natsUrl: string[];
  site: string;
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
};

const flags = {
  "nats-url": { env: "NATS_URL", help: "NATS server URL(s), comma separated", def: "nats://127.0.0.1:4222" },
  site: { env: "SYNCD_SITE", help: "site name (letters, digits, - and _); the JetStream domain by default" },
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
  "reconcile-interval": {
    env: "SYNCD_RECONCILE_INTERVAL",
    help: "seconds between anti-entropy runs, 0 = off",
    def: "300",
  },
  "log-level": { env: "LOG_LEVEL", help: "pino level", def: "info" },
  instance: { env: "SYNCD_INSTANCE", help: "instance label for logs and metadata (default: hostname-pid)" },
  user: { env: "NATS_USER", help: "NATS user" },
  password: { env: "NATS_PASSWORD", help: "NATS password" },
  token: { env: "NATS_TOKEN", help: "NATS token" },
  creds: { env: "NATS_CREDS", help: "NATS credentials file" },
  nkey: { env: "NATS_NKEY", help: "file holding an nkey seed" },
  "tls-ca": { env: "NATS_TLS_CA", help: "CA certificate file" },
  "tls-cert": { env: "NATS_TLS_CERT", help: "client certificate file" },
  "tls-key": { env: "NATS_TLS_KEY", help: "client key file" },
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
  return `usage: ${service} --site <site> [options]\n${lines.join("\n")}`;
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

/** Parse argv and env into a Config (throws ConfigError). */
export function loadConfig(
  argv: string[] = process.argv.slice(2),
  env: NodeJS.ProcessEnv = process.env,
): Config {
  const options = Object.fromEntries(Object.keys(flags).map((k) => [k, { type: "string" as const }]));
  const { values } = parseArgs({
    args: argv,
    options: { ...options, help: { type: "boolean" } },
    strict: true,
  });
  if (values.help) throw new ConfigError("help");
  const get = (k: Flag): string | undefined => {
    const v = (values as Record<string, string | undefined>)[k] ?? env[flags[k].env];
    if (v !== undefined && v !== "") return v;
    const f = flags[k];
    return "def" in f ? f.def : undefined;
  };
  const site = get("site");
  if (!site) throw new ConfigError("--site (or SYNCD_SITE) is required");
  if (!TOKEN.test(site)) throw new ConfigError(`--site must match ${TOKEN}, got ${site}`);
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
  const auth: Config["auth"] = {};
  const set = (k: keyof Config["auth"], f: Flag) => {
    const v = get(f);
    if (v !== undefined) auth[k] = v;
  };
  set("user", "user");
  set("password", "password");
  set("token", "token");
  set("creds", "creds");
  set("nkeySeedFile", "nkey");
  set("tlsCa", "tls-ca");
  set("tlsCert", "tls-cert");
  set("tlsKey", "tls-key");
  return {
    natsUrl: (get("nats-url") ?? "").split(",").map((s) => s.trim()),
    site,
    nodeId: get("node-id") ?? `site-${site}`,
    domain,
    hubDomain,
    replicas: replicasOf("replicas", get("replicas")),
    hubReplicas: replicasOf("hub-replicas", get("hub-replicas")),
    buckets,
    clock,
    maxClockSkewMs: intOf("max-clock-skew", get("max-clock-skew")!, 0),
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
  };
}
