/**
 * Connection options, one module for the `syncd` CLI and the services: natscli's flag and environment
 * spellings (plus the older syncd ones), natscli context files, and the connect options they give.
 */
import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import {
  type ConnectionOptions,
  type NatsConnection,
  credsAuthenticator,
  nkeyAuthenticator,
} from "@nats-io/nats-core";
import { connect } from "@nats-io/transport-node";
import { quietSettledRequests } from "./request.ts";

export type { NatsConnection };

/** The connection settings, whoever reads them. */
export type ConnOptions = {
  servers: string[];
  user?: string;
  password?: string;
  token?: string;
  creds?: string;
  /** file holding an nkey seed */
  nkey?: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
};

type ConnKey = Exclude<keyof ConnOptions, "servers">;

/** One connection flag: natscli's spelling first, older syncd spellings as aliases. */
export type ConnFlag = {
  /** the ConnOptions field it sets (`servers` and `context` are special) */
  key: ConnKey | "servers" | "context";
  short?: string;
  aliases: string[];
  /** environment variables, natscli's first */
  env: string[];
  help: string;
  def?: string;
};

/** The connection flags, as natscli spells them (`nats --help`). */
export const CONN_FLAGS: Record<string, ConnFlag> = {
  server: {
    key: "servers",
    short: "s",
    aliases: ["nats-url"],
    env: ["NATS_URL"],
    help: "NATS server URL(s), comma separated",
    def: "nats://127.0.0.1:4222",
  },
  user: { key: "user", aliases: [], env: ["NATS_USER"], help: "user name" },
  password: { key: "password", aliases: [], env: ["NATS_PASSWORD"], help: "password" },
  token: { key: "token", aliases: [], env: ["NATS_TOKEN"], help: "token" },
  creds: { key: "creds", aliases: [], env: ["NATS_CREDS"], help: "credentials file (JWT and seed)" },
  nkey: { key: "nkey", aliases: [], env: ["NATS_NKEY"], help: "file holding an nkey seed" },
  tlscert: {
    key: "tlsCert",
    aliases: ["tls-cert"],
    env: ["NATS_CERT", "NATS_TLS_CERT"],
    help: "TLS client certificate file",
  },
  tlskey: {
    key: "tlsKey",
    aliases: ["tls-key"],
    env: ["NATS_KEY", "NATS_TLS_KEY"],
    help: "TLS client key file",
  },
  tlsca: {
    key: "tlsCa",
    aliases: ["tls-ca"],
    env: ["NATS_CA", "NATS_TLS_CA"],
    help: "TLS CA certificate file",
  },
  context: {
    key: "context",
    aliases: [],
    env: ["NATS_CONTEXT"],
    help: "natscli context (~/.config/nats/context/<name>.json)",
  },
};

/** Thrown for bad connection settings (a context that is missing or unreadable, for one). */
export class ConnOptionsError extends Error {
  override name = "ConnOptionsError";
}

/** The `parseArgs` options of every spelling of the connection flags. */
export function connParseOptions(): Record<string, { type: "string"; short?: string }> {
  const out: Record<string, { type: "string"; short?: string }> = {};
  for (const [name, f] of Object.entries(CONN_FLAGS)) {
    out[name] = { type: "string", ...(f.short ? { short: f.short } : {}) };
    for (const a of f.aliases) out[a] = { type: "string" };
  }
  return out;
}

/** Usage lines of the connection flags, `[$ENV]` after each (width: flag column). */
export function connUsage(width: number): string[] {
  return Object.entries(CONN_FLAGS).map(([name, f]) => {
    const spell = [`--${name}`, ...(f.short ? [`-${f.short}`] : []), ...f.aliases.map((a) => `--${a}`)].join(
      ", ",
    );
    return `  ${spell.padEnd(width)} ${f.help} ${f.env.map((e) => `[$${e}]`).join(" ")}${f.def ? ` (default ${f.def})` : ""}`;
  });
}

/** The natscli config directory: $XDG_CONFIG_HOME/nats, else ~/.config/nats. */
export function natsConfigDir(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME || join(env.HOME || homedir(), ".config");
  return join(base, "nats");
}

/** The fields of a natscli context file that syncd uses. */
type ContextFile = {
  url?: string;
  user?: string;
  password?: string;
  token?: string;
  creds?: string;
  nkey?: string;
  cert?: string;
  key?: string;
  ca?: string;
  nsc?: string;
  user_jwt?: string;
};

const CONTEXT_NAME = /^[^/\\]+$/;

function expandHome(p: string, env: NodeJS.ProcessEnv): string {
  return p.startsWith("~/") ? join(env.HOME || homedir(), p.slice(2)) : p;
}

/**
 * The settings of a natscli context: `name`, or with `name` undefined the context selected by
 * `nats context select` (context.txt), if any. Throws ConnOptionsError for a named context that
 * cannot be read.
 */
export function readContext(
  name: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): Partial<ConnOptions> {
  const dir = natsConfigDir(env);
  let chosen = name;
  if (chosen === undefined) {
    try {
      chosen = readFileSync(join(dir, "context.txt"), "utf8").trim();
    } catch {
      return {};
    }
    if (!chosen) return {};
  }
  if (!CONTEXT_NAME.test(chosen) || chosen === "." || chosen === "..")
    throw new ConnOptionsError(`bad context name "${chosen}"`);
  const file = join(dir, "context", `${chosen}.json`);
  let ctx: ContextFile;
  try {
    ctx = JSON.parse(readFileSync(file, "utf8")) as ContextFile;
  } catch (err) {
    throw new ConnOptionsError(`cannot read context "${chosen}" (${file}): ${(err as Error).message}`);
  }
  if (typeof ctx !== "object" || ctx === null)
    throw new ConnOptionsError(`context file ${file} is not an object`);
  if (ctx.nsc || ctx.user_jwt)
    throw new ConnOptionsError(`context "${chosen}": nsc and user_jwt contexts are not supported, use creds`);
  const out: Partial<ConnOptions> = {};
  const str = (v: unknown) => (typeof v === "string" && v !== "" ? v : undefined);
  const url = str(ctx.url);
  if (url) out.servers = splitServers(url);
  const fields: [ConnKey, keyof ContextFile, boolean][] = [
    ["user", "user", false],
    ["password", "password", false],
    ["token", "token", false],
    ["creds", "creds", true],
    ["nkey", "nkey", true],
    ["tlsCert", "cert", true],
    ["tlsKey", "key", true],
    ["tlsCa", "ca", true],
  ];
  for (const [k, f, isPath] of fields) {
    const v = str(ctx[f]);
    if (v !== undefined) out[k] = isPath ? expandHome(v, env) : v;
  }
  // natscli: a user without a password is a token ("Username or Token")
  if (out.user !== undefined && out.password === undefined && out.token === undefined) {
    const { user, ...rest } = out;
    return { ...rest, token: user };
  }
  return out;
}

function splitServers(s: string): string[] {
  return s
    .split(",")
    .map((u) => u.trim())
    .filter(Boolean);
}

/**
 * The connection settings from parsed flags (any spelling) and the environment: flag, then
 * environment, then the context (`--context`/NATS_CONTEXT; the selected natscli context too when
 * `selectedContext`), then the default. Throws ConnOptionsError.
 */
export function resolveConnOptions(
  values: Record<string, unknown>,
  env: NodeJS.ProcessEnv,
  opts: { selectedContext: boolean },
): ConnOptions {
  const given: Partial<Record<ConnFlag["key"], string>> = {};
  for (const [name, f] of Object.entries(CONN_FLAGS)) {
    let v: string | undefined;
    for (const spelling of [name, ...f.aliases]) {
      const x = values[spelling];
      if (typeof x === "string" && x !== "") v = x;
    }
    for (const e of f.env) {
      if (v !== undefined) break;
      const x = env[e];
      if (x !== undefined && x !== "") v = x;
    }
    if (v !== undefined) given[f.key] = v;
  }
  const ctx =
    given.context !== undefined || opts.selectedContext
      ? readContext(given.context, env)
      : ({} as Partial<ConnOptions>);
  const servers =
    given.servers !== undefined ? splitServers(given.servers) : (ctx.servers ?? [CONN_FLAGS.server!.def!]);
  if (servers.length === 0) throw new ConnOptionsError("--server is empty");
  const out: ConnOptions = { servers };
  for (const k of ["user", "password", "token", "creds", "nkey", "tlsCa", "tlsCert", "tlsKey"] as const) {
    const v = given[k] ?? ctx[k];
    if (v !== undefined) out[k] = v;
  }
  return out;
}

/** The nats.js connect options of these settings (reads the creds and nkey files). */
export function connectOptions(o: ConnOptions): ConnectionOptions {
  const authenticator = o.creds
    ? credsAuthenticator(readFileSync(o.creds))
    : o.nkey
      ? nkeyAuthenticator(new TextEncoder().encode(readFileSync(o.nkey, "utf8").trim()))
      : undefined;
  const tls =
    o.tlsCa || o.tlsCert
      ? {
          ...(o.tlsCa ? { caFile: o.tlsCa } : {}),
          ...(o.tlsCert ? { certFile: o.tlsCert } : {}),
          ...(o.tlsKey ? { keyFile: o.tlsKey } : {}),
        }
      : undefined;
  return {
    servers: o.servers,
    ...(o.user ? { user: o.user, pass: o.password ?? "" } : {}),
    ...(o.token ? { token: o.token } : {}),
    ...(authenticator ? { authenticator } : {}),
    ...(tls ? { tls } : {}),
  };
}

/** What a service connection needs of the config. */
export type ServiceConnConfig = {
  natsUrl: string[];
  auth: Omit<ConnOptions, "servers" | "nkey"> & { nkeySeedFile?: string };
};

/** Connect a service with the config's servers and credentials: endless reconnects; waits for the first connect. */
export async function connectNats(config: ServiceConnConfig, name: string): Promise<NatsConnection> {
  const { nkeySeedFile, ...auth } = config.auth;
  quietSettledRequests();
  return connect({
    ...connectOptions({ servers: config.natsUrl, ...auth, ...(nkeySeedFile ? { nkey: nkeySeedFile } : {}) }),
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    waitOnFirstConnect: true,
    // no stack-trace Error per request: a third of the services' CPU on the hot path (bench profile)
    noAsyncTraces: true,
  });
}
