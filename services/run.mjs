#!/usr/bin/env node
// Runs one service: `node services/run.mjs <clock|watcher|merger|reconciler> [flags]`, or through the
// package's bins `syncd-clock`, `syncd-watcher`, `syncd-merger`, `syncd-reconciler` [flags]; the four
// of a site in one process: `node services/run.mjs agent [flags]` or `syncd-agent`.
// Runs the compiled build; see services/launch.mjs for what happens when it is missing or stale.
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { launch } from "./launch.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const kinds = ["clock", "watcher", "merger", "reconciler", "agent"];
const bin = /^syncd-([a-z]+)(\.mjs|\.cmd)?$/.exec(basename(process.argv[1] ?? ""));
let kind = bin && kinds.includes(bin[1]) ? bin[1] : undefined;
if (!kind) {
  kind = process.argv[2];
  if (!kinds.includes(kind ?? "")) {
    console.error(`usage: node services/run.mjs <${kinds.join("|")}> [flags]  (--help for the flags)`);
    process.exit(2);
  }
  process.argv.splice(2, 1);
}
await launch(root, `services/${kind}/main`);
