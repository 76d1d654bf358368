#!/usr/bin/env node
// The `syncd` bin: runs the compiled CLI (dist/services/cli/main.js); see services/launch.mjs.
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { launch } from "../launch.mjs";

await launch(join(dirname(fileURLToPath(import.meta.url)), "..", ".."), "services/cli/main");
