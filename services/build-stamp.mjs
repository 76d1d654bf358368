// Whether the compiled build (dist/) is newer than every source it was built from. Shared by
// services/run.mjs (which build to run) and scripts/build.mjs (build only when stale).
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";

function newest(dir, exts) {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) t = Math.max(t, newest(p, exts));
    else if (exts.some((x) => e.name.endsWith(x))) t = Math.max(t, statSync(p).mtimeMs);
  }
  return t;
}

/** The stamp file `npm run build` writes after a successful compile. */
export function stampFile(root) {
  return join(root, "dist", ".stamp");
}

/** True when dist/ holds a build at least as new as services/**.ts and schemas/**.json. */
export function buildIsFresh(root) {
  const stamp = stampFile(root);
  if (!existsSync(stamp)) return false;
  const sources = Math.max(newest(join(root, "services"), [".ts"]), newest(join(root, "schemas"), [".json"]));
  return statSync(stamp).mtimeMs >= sources;
}
