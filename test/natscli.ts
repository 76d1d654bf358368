/**
 * The real `nats` CLI (natscli, built by `./scripts/ensure-deps.sh --go-tools`) for the tests that
 * hold the mesh and the docs to it: `$NATS_CLI` (test.sh sets it), else the cached build of
 * scripts/lib/go-tools.sh. Tests that need it skip with `NATS_CLI_MISSING` as their reason when it is
 * absent (no Go on the machine). Runs are isolated from the user's own `nats context`s.
 */
import { execFile, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

function cachedCli(env: NodeJS.ProcessEnv): string {
  const cache = env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache");
  return path.join(env.SYNCD_TOOLS_DIR || path.join(cache, "nats-kv-syncd", "go-bin"), "nats");
}

/** Path of the nats CLI, or undefined when it is not installed. */
export const NATS_CLI: string | undefined = [process.env.NATS_CLI, cachedCli(process.env)].find(
  (p): p is string => !!p && existsSync(p),
);

/** The skip reason of a test that needs the CLI, or false when it is there. */
export const NATS_CLI_MISSING: string | false = NATS_CLI
  ? false
  : "no nats CLI: set NATS_CLI or run ./scripts/ensure-deps.sh --go-tools (needs Go)";

/** A config dir without contexts, so `nats` uses only the flags it is given. */
export const CLI_CONFIG_HOME: string = mkdtempSync(path.join(os.tmpdir(), "syncd-natscli-"));

/** Environment for the CLI: no NATS_* settings and no contexts from the user running the tests. */
export function cliEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const own = /^(NATS_(URL|CONTEXT|USER|PASSWORD|CREDS|CA|CERT|KEY|NKEY)|NODE_TEST_CONTEXT)$/;
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !own.test(k)));
  return { ...env, XDG_CONFIG_HOME: CLI_CONFIG_HOME, ...extra };
}

export type CliResult = { code: number | null; stdout: string; stderr: string };

/** Run `nats <args>` (throws when the CLI is missing). */
export function nats(args: string[], timeoutMs = 30_000): CliResult {
  if (!NATS_CLI) throw new Error(NATS_CLI_MISSING || "no nats CLI");
  const r = spawnSync(NATS_CLI, args, { env: cliEnv(), encoding: "utf8", timeout: timeoutMs, input: "" });
  return {
    code: r.status,
    stdout: r.stdout ?? "",
    stderr: `${r.stderr ?? ""}${r.error ? String(r.error) : ""}`,
  };
}

/** `nats <args> --json`, parsed; throws with the CLI's output when it fails. */
export function natsJson<T>(args: string[]): T {
  const r = nats([...args, "--json"]);
  if (r.code !== 0) throw new Error(`nats ${args.join(" ")} --json: exit ${r.code}: ${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout) as T;
}

/** `nats <args>` without blocking the event loop (for a responder in the test process itself). */
export function natsAsync(args: string[], timeoutMs = 30_000): Promise<CliResult> {
  if (!NATS_CLI) throw new Error(NATS_CLI_MISSING || "no nats CLI");
  const cli = NATS_CLI;
  return new Promise((resolve) => {
    execFile(cli, args, { env: cliEnv(), encoding: "utf8", timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}
