/**
 * The `syncd` CLI: parse the command line, connect, run one command, print JSON (--json) or text.
 * Exit codes: 0 ok, 1 error (one clear line on stderr, no stack trace), 2 usage error.
 */
import type { NatsConnection } from "@nats-io/nats-core";
import { useMesh } from "../lib/subjects.ts";
import { VERSION } from "../lib/version.ts";
import { type Cli, CliError, USAGE, UsageError, parseCli } from "./args.ts";
import { conflictsCommand } from "./conflicts.ts";
import type { Ctx, Output } from "./context.ts";
import { diffCommand } from "./diff.ts";
import { delCommand, getCommand, putCommand } from "./keys.ts";
import { microCommand } from "./micro.ts";
import { MeshClient, connectCli, messageOf } from "./nats.ts";
import { reconcileCommand } from "./reconcile.ts";
import { siteCommand } from "./site.ts";
import { statusCommand } from "./status.ts";

/** Where the CLI writes (tests pass their own). */
export type Io = { out: (s: string) => void; err: (s: string) => void };

type Command = {
  min: number;
  max: number;
  synopsis: string;
  /** what `syncd <command> --help` says below the synopsis */
  help: string;
  run: (ctx: Ctx) => Promise<Output>;
};

const COMMANDS: Record<string, Command> = {
  micro: {
    min: 1,
    max: 3,
    synopsis: "micro ls|info|stats [name] [id]",
    help: "Every micro service instance of the mesh, found with $SRV.PING|INFO|STATS:\n  ls [name]          name, id, version, site, description\n  info [name] [id]   details with endpoints (subject, queue group, schemas)\n  stats [name] [id]  per endpoint: requests, errors, processing time, last error, data",
    run: microCommand,
  },
  status: {
    min: 0,
    max: 0,
    synopsis: "status [--site s] [--check]",
    help: "The mesh: per site its services, clock, watcher, merger, last reconcile, dead letters and\nconflicts, and the health conditions with their severity. --site narrows it to one site;\n--check exits 1 when a condition needs a person (severity error): the monitoring hook.",
    run: statusCommand,
  },
  get: {
    min: 2,
    max: 2,
    synopsis: "get <bucket> <key> [--site s]",
    help: "A key`s value and version at every site, side by side (--site: one site).",
    run: getCommand,
  },
  diff: {
    min: 1,
    max: 1,
    synopsis: "diff <bucket>",
    help: "The keys of <bucket> whose versions differ between sites, found by digest descent.",
    run: diffCommand,
  },
  put: {
    min: 3,
    max: 3,
    synopsis: "put <bucket> <key> <value|-> --site <site>",
    help: `Write <value> (or "-": stdin) to <key> through the KV of --site, like a user write.`,
    run: putCommand,
  },
  del: {
    min: 2,
    max: 2,
    synopsis: "del <bucket> <key> --site <site>",
    help: "Delete <key> through the KV of --site, like a user delete (aliases: delete, rm).",
    run: delCommand,
  },
  reconcile: {
    min: 0,
    max: 0,
    synopsis: "reconcile [--site s] [--bucket b] [--peer p,...]",
    help: "Run anti-entropy now at every site (or --site), for every bucket (or --bucket) against every\npeer (or --peer), and print the runs.",
    run: reconcileCommand,
  },
  site: {
    min: 2,
    max: 2,
    synopsis: "site remove <name>",
    help: "Remove a stopped site from the mesh: its member record, its domain claim and its source in the\nhub's aggregate (--hub-domain, default hub). Its ops stay: they are the mesh's state.",
    run: siteCommand,
  },
  conflicts: {
    min: 1,
    max: 2,
    synopsis: "conflicts <bucket> [key] [--site s] [--limit n]",
    help: "The conflict records of every site (or --site), newest last; --limit n shows the newest n\n(default 100, 0 = all).",
    run: conflictsCommand,
  },
};
const ALIASES: Record<string, string> = { delete: "del", rm: "del" };
const MICRO_VERBS = new Set(["ls", "list", "info", "stats"]);

/** The help of one command: synopsis, what it does, the flags every command takes. */
function commandUsage(cmd: Command): string {
  return `usage: syncd [flags] ${cmd.synopsis}\n\n${cmd.help}\n\n${USAGE.slice(USAGE.indexOf("\nflags (") + 1)}`;
}

/** The command to run, checked before anything connects; throws UsageError. */
function resolve(cli: Cli): Command {
  const name = cli.command ? (ALIASES[cli.command] ?? cli.command) : undefined;
  if (!name) throw new UsageError("no command given");
  const cmd = COMMANDS[name];
  if (!cmd) throw new UsageError(`unknown command "${cli.command}"`);
  if (cli.args.length < cmd.min || cli.args.length > cmd.max)
    throw new UsageError(`usage: syncd ${cmd.synopsis}`);
  if (name === "micro") {
    const verb = cli.args[0]!;
    if (!MICRO_VERBS.has(verb)) throw new UsageError(`usage: syncd ${cmd.synopsis}`);
    if (verb === "list") cli.args[0] = "ls";
  }
  return cmd;
}

/** Run the CLI with these arguments (without node and script); returns the exit code. */
export async function run(argv: string[], io: Io, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  let cli: Cli;
  let cmd: Command;
  try {
    cli = parseCli(argv, env);
    if (cli.help) {
      const name = cli.command ? (ALIASES[cli.command] ?? cli.command) : undefined;
      const cmd = name ? COMMANDS[name] : undefined;
      io.out(cmd ? commandUsage(cmd) : USAGE);
      return 0;
    }
    if (cli.version) {
      io.out(VERSION);
      return 0;
    }
    cmd = resolve(cli);
    useMesh(cli.mesh);
  } catch (err) {
    return fail(err, io, env);
  }
  let nc: NatsConnection | undefined;
  let mesh: MeshClient | undefined;
  try {
    nc = await connectCli(cli.conn);
    mesh = new MeshClient(nc, (inboxPrefix) => connectCli(cli.conn, inboxPrefix));
    const ctx: Ctx = { nc, mesh, cli, warn: (m) => io.err(`syncd: ${m}`) };
    const output = await cmd.run(ctx);
    io.out(cli.json ? JSON.stringify(output.data, null, 2) : output.text);
    return output.exitCode ?? 0;
  } catch (err) {
    return fail(err, io, env);
  } finally {
    await mesh?.close();
    await nc?.close().catch(() => {});
  }
}

function fail(err: unknown, io: Io, env: NodeJS.ProcessEnv): number {
  if (err instanceof UsageError) {
    io.err(`syncd: ${err.message}\n(syncd --help for usage)`);
    return 2;
  }
  io.err(`syncd: error: ${err instanceof CliError ? err.message : messageOf(err)}`);
  if (env.SYNCD_DEBUG === "1" && err instanceof Error && err.stack) io.err(err.stack);
  return 1;
}
