#!/usr/bin/env node
// Compile services/ to dist/ (`npm run build`) unless the build is already fresh. Called by
// scripts/ensure-deps.sh, so ./scripts/up.sh, site.sh and test.sh run compiled services.
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildIsFresh, stampFile } from "../services/build-stamp.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
if (buildIsFresh(root) && !process.argv.includes("--force")) process.exit(0);
console.error("build: compiling services/ to dist/ (tsc -p tsconfig.build.json)");
execFileSync(
  process.execPath,
  [join(root, "node_modules/typescript/bin/tsc"), "-p", join(root, "tsconfig.build.json")],
  {
    stdio: "inherit",
    cwd: root,
  },
);
writeFileSync(stampFile(root), new Date().toISOString());
