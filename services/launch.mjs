// How an entry point starts (services/run.mjs for the services, services/cli/syncd.mjs for the CLI).
// Production runs the compiled build (dist/, `npm run build`) and nothing else:
// - an installed package (npm pack / npm install) has no TypeScript sources: it runs dist/;
// - a checkout runs dist/ when it is at least as new as every source file;
// - a checkout whose dist/ is missing or stale: with NODE_ENV=production it refuses to start (exit 1,
//   saying how to build); otherwise it runs the sources through tsx and says so loudly on stderr;
// - SYNCD_TSX=1 runs the sources through tsx on purpose (development, no warning).
import { existsSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { buildIsFresh } from "./build-stamp.mjs";

/** Start `rel` (a path under the package root without extension, e.g. "services/merger/main"). */
export async function launch(root, rel) {
  const built = join(root, "dist", `${rel}.js`);
  const source = join(root, `${rel}.ts`);
  const checkout = existsSync(source);
  if (!checkout) {
    if (!existsSync(built)) {
      console.error(`syncd: ${built} is missing: this package was packed without its build (npm run build)`);
      process.exit(1);
    }
    return import(pathToFileURL(built).href);
  }
  if (process.env.SYNCD_TSX === "1") return viaTsx(source);
  if (existsSync(built) && buildIsFresh(root)) return import(pathToFileURL(built).href);
  const why = existsSync(built) ? "dist/ is older than the sources" : "dist/ is missing";
  if (process.env.NODE_ENV === "production") {
    console.error(
      `syncd: NOT BUILT (${why}) and NODE_ENV=production: refusing to run the TypeScript sources.\n` +
        `syncd: run \`npm run build\` in ${root} (or set SYNCD_TSX=1 to run the sources on purpose).`,
    );
    process.exit(1);
  }
  console.error(
    `syncd: WARNING: NOT BUILT (${why}): running the TypeScript sources through tsx (~33 MB more per ` +
      "process, slower start). Run `npm run build`; production (NODE_ENV=production) refuses this.",
  );
  return viaTsx(source);
}

async function viaTsx(source) {
  let api;
  try {
    api = await import("tsx/esm/api");
  } catch {
    console.error("syncd: tsx is not installed (a dev dependency): run `npm run build` and use dist/");
    process.exit(1);
  }
  api.register();
  return import(pathToFileURL(source).href);
}
