/**
 * Exactly one @nats-io/nats-core: the client packages (transport-node, jetstream, kv) and
 * @nats-io/services must share one copy, or services would be built on a second, different core
 * (its own protocol handler, inbox, errors, `instanceof` checks). package.json pins it with an
 * override because @nats-io/services asks for a pre-release core; this test keeps that true.
 * (test/micro-conformance.test.ts is what shows the services actually work against it.)
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createRequire } from "node:module";
import * as os from "node:os";
import * as path from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const CORE = "@nats-io/nats-core";

type LsNode = {
  version?: string;
  path?: string;
  missing?: boolean;
  invalid?: string | boolean;
  problems?: string[];
  dependencies?: Record<string, LsNode>;
};

/** Every occurrence of `name` in an `npm ls --json --long` tree, with the chain that leads to it. */
function occurrences(node: LsNode, name: string, chain: string[] = []): { chain: string; node: LsNode }[] {
  return Object.entries(node.dependencies ?? {}).flatMap(([dep, child]) => [
    ...(dep === name ? [{ chain: [...chain, dep].join(" > "), node: child }] : []),
    ...occurrences(child, name, [...chain, dep]),
  ]);
}

/**
 * What is wrong with the occurrences of `name` in an `npm ls --json --long` tree: anything but one
 * version (`wanted`) installed at one path, reached directly and through `dependents`.
 */
function treeProblems(tree: LsNode, name: string, wanted: string, dependents: string[]): string[] {
  const problems = (tree.problems ?? []).map((p) => `npm ls: ${p}`);
  const found = occurrences(tree, name);
  const direct = found.filter((f) => f.chain === name);
  if (direct.length !== 1) problems.push(`${name} is not a direct dependency`);
  const home = direct[0]?.node.path;
  for (const { chain, node } of found) {
    if (node.missing || node.invalid)
      problems.push(`${chain}: ${node.missing ? "missing" : `invalid ${String(node.invalid)}`}`);
    if (node.version !== wanted)
      problems.push(`${chain}: version ${node.version}, package.json wants ${wanted}`);
    if (node.path !== home)
      problems.push(`${chain}: a second copy at ${node.path} (the project's is at ${home})`);
  }
  for (const d of dependents)
    if (!found.some((f) => f.chain === `${d} > ${name}`)) problems.push(`${d} does not depend on ${name}`);
  return problems;
}

/** Every installed directory of `name` under a node_modules tree, nested copies included. */
function installedCopies(nodeModules: string, name: string): string[] {
  const found: string[] = [];
  const scan = (dir: string) => {
    if (!existsSync(dir)) return;
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (!entry.isDirectory() && !entry.isSymbolicLink()) continue;
      if (entry.name.startsWith(".")) continue; // .bin, .package-lock.json, .cache
      const pkgs = entry.name.startsWith("@")
        ? readdirSync(path.join(dir, entry.name)).map((n) => `${entry.name}/${n}`)
        : [entry.name];
      for (const pkg of pkgs) {
        const pkgDir = path.join(dir, pkg);
        if (pkg === name) found.push(pkgDir);
        scan(path.join(pkgDir, "node_modules"));
      }
    }
  };
  scan(nodeModules);
  return found;
}

/** The directory of an installed package, found the way the project resolves it (its main entry, then up). */
function packageDir(pkg: string): string {
  let dir = path.dirname(createRequire(path.join(REPO, "package.json")).resolve(pkg));
  for (;;) {
    const pj = path.join(dir, "package.json");
    if (existsSync(pj) && (JSON.parse(readFileSync(pj, "utf8")) as { name?: string }).name === pkg)
      return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`no package.json of ${pkg} above its entry point`);
    dir = up;
  }
}

/** Where `spec` resolves from inside an installed package, as that package's own require would. */
function resolveFrom(pkg: string, spec: string): string {
  return realpathSync(createRequire(path.join(packageDir(pkg), "package.json")).resolve(spec));
}

describe("one @nats-io/nats-core", () => {
  const wanted = (
    JSON.parse(readFileSync(path.join(REPO, "package.json"), "utf8")) as {
      dependencies: Record<string, string>;
    }
  ).dependencies[CORE] as string;
  const dependents = ["@nats-io/services", "@nats-io/transport-node", "@nats-io/jetstream", "@nats-io/kv"];

  it("npm ls: every occurrence in the tree is the same version at the same path, without problems", () => {
    const out = execFileSync("npm", ["ls", CORE, "--all", "--json", "--long"], {
      cwd: REPO,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    });
    const tree = JSON.parse(out) as LsNode;
    assert.ok(
      occurrences(tree, CORE).length > dependents.length,
      "npm ls lists the core under every dependent",
    );
    assert.deepEqual(treeProblems(tree, CORE, wanted, dependents), []);
  });

  it("node_modules holds a single installed copy (no nested node_modules/@nats-io/nats-core)", () => {
    const copies = installedCopies(path.join(REPO, "node_modules"), CORE);
    assert.deepEqual(copies, [path.join(REPO, "node_modules", CORE)]);
  });

  it("@nats-io/services resolves @nats-io/nats-core to the same files as @nats-io/transport-node (and the rest)", () => {
    for (const spec of [CORE, `${CORE}/internal`]) {
      const fromTransport = resolveFrom("@nats-io/transport-node", spec);
      assert.equal(resolveFrom("@nats-io/services", spec), fromTransport, `${spec} from @nats-io/services`);
      for (const other of ["@nats-io/jetstream", "@nats-io/kv"])
        assert.equal(resolveFrom(other, spec), fromTransport, `${spec} from ${other}`);
      const fromProject = realpathSync(createRequire(path.join(REPO, "package.json")).resolve(spec));
      assert.equal(fromProject, fromTransport, `${spec} from the project itself`);
    }
  });

  it("the checks above catch a second copy (synthetic tree with services' own nested core)", () => {
    const tmp = mkdtempSync(path.join(os.tmpdir(), "syncd-deps-"));
    try {
      const pkg = (dir: string, name: string, version: string) => {
        mkdirSync(dir, { recursive: true });
        writeFileSync(path.join(dir, "package.json"), JSON.stringify({ name, version, main: "index.js" }));
        writeFileSync(path.join(dir, "index.js"), "module.exports = {};\n");
      };
      const nm = path.join(tmp, "node_modules");
      pkg(tmp, "app", "0.0.0");
      pkg(path.join(nm, CORE), CORE, wanted);
      pkg(path.join(nm, "@nats-io/services"), "@nats-io/services", "3.0.0-25");
      pkg(path.join(nm, "@nats-io/services/node_modules", CORE), CORE, "3.0.0-50");
      assert.equal(installedCopies(nm, CORE).length, 2);
      const fromServices = createRequire(path.join(nm, "@nats-io/services/package.json")).resolve(CORE);
      const fromApp = createRequire(path.join(tmp, "package.json")).resolve(CORE);
      assert.notEqual(fromServices, fromApp);
      const tree: LsNode = {
        dependencies: {
          [CORE]: { version: wanted, path: path.join(nm, CORE) },
          "@nats-io/services": {
            dependencies: {
              [CORE]: { version: "3.0.0-50", path: path.join(nm, "@nats-io/services/node_modules", CORE) },
            },
          },
        },
      };
      const problems = treeProblems(tree, CORE, wanted, ["@nats-io/services"]);
      assert.equal(problems.length, 2, problems.join("\n"));
      assert.match(problems.join("\n"), /version 3\.0\.0-50/);
      assert.match(problems.join("\n"), /a second copy/);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});

describe("scripts/test.sh: two servers, the Go tools, one summary", () => {
  const tools = readFileSync(path.join(REPO, "scripts/lib/go-tools.sh"), "utf8");
  /** PATH without any directory that holds `go`: a machine without Go. */
  const noGoPath = (process.env.PATH ?? "")
    .split(path.delimiter)
    .filter((d) => d && !existsSync(path.join(d, "go")))
    .join(path.delimiter);
  const testSh = (env: NodeJS.ProcessEnv) => {
    const r = spawnSync(path.join(REPO, "scripts/test.sh"), [], {
      cwd: REPO,
      encoding: "utf8",
      timeout: 240_000,
      env: {
        ...process.env,
        NODE_TEST_CONTEXT: undefined,
        NATS_SERVER: undefined,
        NATS_CLI: undefined,
        SKIP_CHECKS: "1",
        ...env,
      },
    });
    return { code: r.status, out: `${r.stdout}${r.stderr}` };
  };

  it("pins nats-server v2.15.2 and natscli v0.5.0 (not v0.5.1), built with go install", () => {
    assert.match(tools, /github\.com\/nats-io\/nats-server\/v2@v2\.15\.2"/);
    assert.match(tools, /github\.com\/nats-io\/natscli\/nats@v0\.5\.0"/);
  });

  it("without Go: one line says what is skipped, one pass, the TAP summary last, exit 0", () => {
    const empty = mkdtempSync(path.join(os.tmpdir(), "syncd-nogo-"));
    try {
      const r = testSh({ PATH: noGoPath, SYNCD_TOOLS_DIR: empty, TEST_FILTER: "unit/I7-op-parsing" });
      assert.equal(r.code, 0, r.out);
      assert.equal(r.out.match(/^test\.sh: skipped .*v2\.15\.2.*nats CLI/gm)?.length, 1, r.out);
      assert.equal(r.out.match(/^== node --test /gm)?.length, 1, r.out);
      assert.match(r.out, /against nats-server v2\.9\.\d+ /);
      assert.match(
        r.out,
        /# tests [1-9]\d*\n# suites \d+\n# pass [1-9]\d*\n# fail 0\n# cancelled 0\n# skipped 0\n# todo 0\n$/,
      );
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it("a failing test: exit non-zero and the summary counts it", () => {
    const r = testSh({
      PATH: noGoPath,
      SYNCD_TOOLS_DIR: "/nonexistent",
      TEST_FILTER: "unit/I1-lww",
      TEST_TIMEOUT_MS: "1",
    });
    assert.notEqual(r.code, 0, r.out);
    assert.match(r.out, /# fail [1-9]\d*\n/);
    assert.match(r.out, /== FAILED/);
  });
});
