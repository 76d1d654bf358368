#!/usr/bin/env node
// Runs one service: `node services/run.mjs <clock|watcher|merger|reconciler> [flags]`, or the four of
// a site in one process: `node services/run.mjs agent [flags]`.
// Uses the compiled build (dist/, `npm run build`) when it is newer than every source file, and the
// TypeScript sources through tsx otherwise, so a stale build never runs. Compiled services need about
// a third less memory (no TypeScript loader in the process).
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { buildIsFresh } from "./build-stamp.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const kinds = ["clock", "watcher", "merger", "reconciler", "agent"];
const kind = process.argv[2];
if (!kinds.includes(kind ?? "")) {
  console.error(`usage: node services/run.mjs <${kinds.join("|")}> [flags]  (--help for the flags)`);
  process.exit(2);
}
process.argv.splice(2, 1);

const built = join(root, "dist", "services", kind, "main.js");
const fresh = process.env.SYNCD_TSX !== "1" && existsSync(built) && buildIsFresh(root);
if (fresh) {
  await import(pathToFileURL(built).href);
} else {
  const { register } = await import("tsx/esm/api");
  register();
  await import(pathToFileURL(join(root, "services", kind, "main.ts")).href);
}
