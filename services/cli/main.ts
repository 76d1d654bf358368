/**
 * Entry point of the `syncd` CLI: `node --import tsx services/cli/main.ts <command> ...` (or the
 * `syncd` bin, services/cli/syncd.mjs). See cli.ts.
 */
import { run } from "./cli.ts";

const code = await run(process.argv.slice(2), {
  out: (s) => process.stdout.write(`${s}\n`),
  err: (s) => process.stderr.write(`${s}\n`),
});
process.exitCode = code;
