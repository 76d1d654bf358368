/**
 * The package version, read once from the package's package.json (found upwards from the sources or
 * from dist/).
 */
import { readFileSync } from "node:fs";

/** The version in package.json: what every service reports in the micro protocol and `syncd --version`. */
export const VERSION: string = packageVersion();

function packageVersion(): string {
  for (const rel of ["../../package.json", "../../../package.json"]) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), "utf8")) as {
        name?: string;
        version: string;
      };
      if (pkg.name === "nats-kv-syncd") return pkg.version;
    } catch {
      // not there: try the next
    }
  }
  throw new Error("package.json of nats-kv-syncd not found");
}
