#!/usr/bin/env node
// The `syncd` bin: registers tsx (the CLI is TypeScript) and runs services/cli/main.ts.
import { register } from "tsx/esm/api";

register();
await import("./main.ts");
