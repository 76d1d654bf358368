/**
 * The `syncd` CLI: parse the command line, connect, run one command, print JSON (--json) or text.
 * Exit codes: 0 ok, 1 error (one clear line on stderr, no stack trace), 2 usage error.
 */
import { readFileSync } from "node:fs";
import type { NatsConnection } from "@nats-io/nats-core";
import { type Cli, CliError, USAGE, UsageError, parseCli } from "./args.ts";
import { conflictsCommand } from "./conflicts.ts";
import type { Ctx, Output } from "./context.ts";
import { diffCommand } from "./diff.ts";
import { delCommand, getCommand, putCommand } from "./keys.ts";
import { microCommand } from "./micro.ts";
import { connectCli, messageOf } from "./nats.ts";
import { reconcileCommand } from "./reconcile.ts";
import { siteCommand } from "./site.ts";
import { statusCommand } from "./status.ts";

/** Where the CLI writes (tests pass their own). */
export type Io = { out: (s: string) => void; err: (s: string) => void };

type Command = { min: number; max: number; synopsis: string; run: (ctx: Ctx) => Promise<Output> };

const COMMANDS: Record<string, Command> = {
  micro: { min: 1, max: 3, synopsis: "micro ls|info|stats [name] [id]", run: microCommand },
  status: { min: 0, max: 0, synopsis: "status [--site s]", run: statusCommand },
  get: { min: 2, max: 2, synopsis: "get <bucket> <key> [--site s]", run: getCommand },
  diff: { min: 1, max: 1, synopsis: "diff <bucket>", run: diffCommand },
  put: { min: 3, max: 3, synopsis: "put <bucket> <key> <value|-> --site <site>", run: putCommand },
  del: { min: 2, max: 2, synopsis: "del <bucket> <key> --site <site>", run: delCommand },
  reconcile: {
    min: 0,
    max: 0,
    synopsis: "reconcile [--site s] [--bucket b] [--peer p,...]",
    run: reconcileCommand,
  },
  site: { min: 2, max: 2, synopsis: "site remove <name>", run: siteCommand },
  conflicts: {
    min: 1,
    max: 2,
    synopsis: "conflicts <bucket> [key] [--site s] [--limit n]",
    run: conflictsCommand,
  },
};
const ALIASES: Record<string, string> = { delete: "del", rm: "del" };
const MICRO_VERBS = new Set(["ls", "list", "info", "stats"]);

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
    version: string;
  };
  return pkg.version;
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
      io.out(USAGE);
      return 0;
    }
    if (cli.version) {
      io.out(packageVersion());
      return 0;
    }
    cmd = resolve(cli);
  } catch (err) {
    return fail(err, io, env);
  }
  let nc: NatsConnection | undefined;
  try {
    nc = await connectCli(cli.conn);
    const ctx: Ctx = { nc, cli, warn: (m) => io.err(`syncd: ${m}`) };
    const output = await cmd.run(ctx);
    io.out(cli.json ? JSON.stringify(output.data, null, 2) : output.text);
    return output.exitCode ?? 0;
  } catch (err) {
    return fail(err, io, env);
  } finally {
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
