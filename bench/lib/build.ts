/**
 * Which form the services run in. The harness starts `node services/run.mjs <kind>`, which runs the
 * compiled build (dist/) when it is fresh and the TypeScript sources through tsx otherwise (or when
 * SYNCD_TSX=1). The bench builds first (scripts/build.mjs compiles only when stale) so it measures
 * the compiled services, and records the form per case: someone editing services/ during a run makes
 * the build stale and the next meshes run through tsx.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import * as path from "node:path";
import { REPO_ROOT } from "../../scripts/lib/topology.ts";
import { log } from "./util.ts";

export type ServicesMode = "compiled" | "tsx";

function newest(dir: string, exts: string[]): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) t = Math.max(t, newest(p, exts));
    else if (exts.some((x) => e.name.endsWith(x))) t = Math.max(t, statSync(p).mtimeMs);
  }
  return t;
}

/** The form services started now would run in (the same test as services/build-stamp.mjs). */
export function servicesMode(): ServicesMode {
  if (process.env.SYNCD_TSX === "1") return "tsx";
  const stamp = path.join(REPO_ROOT, "dist", ".stamp");
  if (!existsSync(path.join(REPO_ROOT, "services", "run.mjs"))) return "tsx";
  if (!existsSync(stamp)) return "tsx";
  const sources = Math.max(
    newest(path.join(REPO_ROOT, "services"), [".ts"]),
    newest(path.join(REPO_ROOT, "schemas"), [".json"]),
  );
  return statSync(stamp).mtimeMs >= sources ? "compiled" : "tsx";
}

/** Compile the services when the build is stale (scripts/build.mjs); on failure the services run through tsx. */
export function ensureBuild(): ServicesMode {
  const script = path.join(REPO_ROOT, "scripts", "build.mjs");
  if (process.env.SYNCD_TSX === "1" || !existsSync(script)) return servicesMode();
  try {
    execFileSync(process.execPath, [script], { cwd: REPO_ROOT, stdio: ["ignore", "inherit", "inherit"] });
  } catch (err) {
    log(`build failed, services will run through tsx: ${(err as Error).message}`);
  }
  return servicesMode();
}
