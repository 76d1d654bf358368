/**
 * Command line of the `syncd` CLI: the connection flags of the `nats` CLI (services/lib/connect.ts,
 * shared with the services: server, credentials, TLS, contexts), timeout, --json, plus the few
 * per-command flags, anywhere on the line.
 */
import { parseArgs } from "node:util";
import {
  ConnOptionsError,
  type ConnOptions as NatsConnOptions,
  connParseOptions,
  connUsage,
  resolveConnOptions,
} from "../lib/connect.ts";

/** A bad command line: printed with a hint to `--help`, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** A failure the user should read (no stack trace), exit code 1. */
export class CliError extends Error {
  override name = "CliError";
}

/** Connection settings, as the services take them (services/lib/connect.ts), and the timeout. */
export type ConnOptions = NatsConnOptions & {
  /** request and connect timeout, ms */
  timeoutMs: number;
};

/** Everything the command line says. */
export type Cli = {
  command: string | undefined;
  args: string[];
  json: boolean;
  help: boolean;
  version: boolean;
  conn: ConnOptions;
  site?: string;
  bucket?: string;
  peers?: string[];
  /** conflicts: newest records to show (0 = all) */
  limit: number;
  /** status: exit 1 when a condition needs a person */
  check: boolean;
  /** site remove: the hub's JetStream domain */
  hubDomain: string;
  /** the mesh namespace (undefined: the default mesh) */
  mesh?: string;
};

/** Flags of every command besides the connection flags, with their environment fallbacks. */
const FLAGS = {
  mesh: { env: "SYNCD_MESH", help: "the mesh namespace (default: none)" },
  "hub-domain": { env: "SYNCD_HUB_DOMAIN", help: "the hub's JetStream domain (site remove)", def: "hub" },
  timeout: {
    env: "NATS_TIMEOUT",
    help: "request timeout (5s, 500ms, 1m; a bare number is seconds)",
    def: "5s",
  },
} as const satisfies Record<string, { env: string; help: string; def?: string }>;

/** The help text. */
export const USAGE = `usage: syncd [flags] <command> [args]

Inspect and operate a nats-kv-syncd mesh from any server of it.

commands:
  micro ls [name]                 every micro service instance (name, id, version, site, description)
  micro info [name] [id]          service details with endpoints (subject, queue group, schemas)
  micro stats [name] [id]         per endpoint: requests, errors, processing time, average, last error, data
  status                          the mesh: per site services, clock, watcher, merger, last reconcile,
                                  dead letters, conflicts
  get <bucket> <key>              a key's value and version at every site, side by side
  diff <bucket>                   the keys whose versions differ between sites (digest descent)
  put <bucket> <key> <value>      write through a site's KV like a user write (value "-": stdin); --site
  del <bucket> <key>              delete through a site's KV like a user delete; --site
  reconcile                       run anti-entropy now at every site (or --site) and print the runs
  conflicts <bucket> [key]        the conflict records of every site (or --site), newest last
  site remove <name>              take a stopped site out of the mesh (member record, hub source);
                                  its ops stay

flags (natscli spellings; flag, then environment, then the context, then the selected context):
${connUsage(26).join("\n")}
  --no-context               ignore the context selected with \`nats context select\`
${Object.entries(FLAGS)
  .map(([k, v]) => `  --${k.padEnd(24)} ${v.help} [$${v.env}]${"def" in v ? ` (default ${v.def})` : ""}`)
  .join("\n")}
  --json                     machine-readable output (JSON)
  --site <site>              the site to act on (put, del; narrows status, get, reconcile, conflicts)
  --bucket <b>               reconcile: only this bucket
  --peer <p,...>             reconcile: only against these peer sites
  --limit <n>                conflicts: show the newest n records (default 100, 0 = all)
  --check                    status: exit 1 when a health condition needs a person (severity error)
  -h, --help                 this text
  --version                  the package version

Sites are found with $SRV.PING.syncd-merger (metadata site, domain), asked directly and through the
hub relay (syncd_via.>), so any server of the mesh will do, also when the hub isolates leaf interest.
Exit codes: 0 ok, 1 error (status --check: also a condition that needs a person), 2 usage error.`;

type Flag = keyof typeof FLAGS;

/** Parse a duration like 5s, 500ms, 1m, 1.5s or a bare number of seconds into ms. */
export function parseDuration(s: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(s.trim());
  if (!m) throw new UsageError(`bad duration "${s}" (use e.g. 5s, 500ms, 1m)`);
  const n = Number(m[1]);
  const ms = m[2] === "ms" ? n : m[2] === "m" ? n * 60_000 : n * 1000;
  if (!(ms > 0)) throw new UsageError(`duration must be positive, got "${s}"`);
  return Math.round(ms);
}

const TOKEN = /^[A-Za-z0-9_-]+$/;

/** Parse argv (without node and script) and the environment; throws UsageError. */
export function parseCli(argv: string[], env: NodeJS.ProcessEnv = process.env): Cli {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(argv);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  const get = (k: Flag): string | undefined => {
    const v = (values as Record<string, string | boolean | undefined>)[k];
    if (typeof v === "string" && v !== "") return v;
    const e = env[FLAGS[k].env];
    if (e !== undefined && e !== "") return e;
    const f = FLAGS[k];
    return "def" in f ? f.def : undefined;
  };
  let nats: NatsConnOptions;
  try {
    nats = resolveConnOptions(values, env, { selectedContext: values["no-context"] !== true });
  } catch (err) {
    if (err instanceof ConnOptionsError) throw new UsageError(err.message);
    throw err;
  }
  const conn: ConnOptions = { ...nats, timeoutMs: parseDuration(get("timeout") ?? "5s") };

  const cli: Cli = {
    command: positionals[0],
    args: positionals.slice(1),
    json: values.json === true,
    help: values.help === true,
    version: values.version === true,
    conn,
    limit: 100,
    check: values.check === true,
    hubDomain: get("hub-domain") ?? "hub",
  };
  const mesh = get("mesh");
  if (mesh !== undefined) {
    if (!TOKEN.test(mesh)) throw new UsageError(`--mesh must match ${TOKEN}, got "${mesh}"`);
    cli.mesh = mesh;
  }
  if (!TOKEN.test(cli.hubDomain))
    throw new UsageError(`--hub-domain must match ${TOKEN}, got "${cli.hubDomain}"`);
  if (values.site !== undefined) {
    if (!TOKEN.test(values.site)) throw new UsageError(`--site must match ${TOKEN}, got "${values.site}"`);
    cli.site = values.site;
  }
  if (values.bucket !== undefined) {
    if (!TOKEN.test(values.bucket))
      throw new UsageError(`--bucket must match ${TOKEN}, got "${values.bucket}"`);
    cli.bucket = values.bucket;
  }
  if (values.peer !== undefined) {
    const peers = values.peer
      .flatMap((p) => p.split(","))
      .map((p) => p.trim())
      .filter(Boolean);
    for (const p of peers) if (!TOKEN.test(p)) throw new UsageError(`--peer must match ${TOKEN}, got "${p}"`);
    cli.peers = peers;
  }
  if (values.limit !== undefined) {
    const n = Number(values.limit);
    if (!Number.isSafeInteger(n) || n < 0)
      throw new UsageError(`--limit must be an integer >= 0, got "${values.limit}"`);
    cli.limit = n;
  }
  return cli;
}

function parse(argv: string[]) {
  const str = { type: "string" } as const;
  return parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      ...connParseOptions(),
      "no-context": { type: "boolean" },
      timeout: str,
      "hub-domain": str,
      mesh: str,
      json: { type: "boolean", short: "j" },
      site: str,
      bucket: str,
      peer: { type: "string", multiple: true },
      limit: str,
      check: { type: "boolean" },
      help: { type: "boolean", short: "h" },
      version: { type: "boolean" },
    },
  });
}

/** Check a command's positional arguments: between `min` and `max` of them, else a UsageError. */
export function expectArgs(cli: Cli, min: number, max: number, synopsis: string): string[] {
  if (cli.args.length < min || cli.args.length > max) throw new UsageError(`usage: syncd ${synopsis}`);
  return cli.args;
}
