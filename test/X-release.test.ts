/**
 * The installable release: `npm pack` gives a package whose install into an empty directory (npm's
 * cache first) provides `syncd` and the four service bins running compiled code without tsx; a
 * checkout whose build is missing or stale refuses to run under NODE_ENV=production and warns
 * otherwise (services/launch.mjs).
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import {
  cpSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { type Proc, freePort, spawnLogged, stopProc, tail } from "../scripts/lib/proc.ts";
import { type Mesh, startMesh, waitFor } from "./harness/mesh.ts";

const REPO = join(fileURLToPath(import.meta.url), "..", "..");
const NPM = process.platform === "win32" ? "npm.cmd" : "npm";

function files(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) files(p, out);
    else out.push(p);
  }
  return out;
}

describe("npm pack → npm install into an empty directory", () => {
  const dir = mkdtempSync(join(tmpdir(), "syncd-release-"));
  const app = join(dir, "app");
  let mesh: Mesh | undefined;
  let proc: Proc | undefined;
  const pkg = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as {
    version: string;
    private?: boolean;
  };

  before(() => {
    const out = execFileSync(NPM, ["pack", "--pack-destination", dir, "--json"], {
      cwd: REPO,
      encoding: "utf8",
    });
    const [packed] = JSON.parse(out.slice(out.indexOf("["))) as { filename: string }[];
    execFileSync("mkdir", ["-p", app]);
    writeFileSync(join(app, "package.json"), JSON.stringify({ name: "syncd-release-test", private: true }));
    execFileSync(
      NPM,
      ["install", "--prefer-offline", "--no-audit", "--no-fund", join(dir, packed!.filename)],
      {
        cwd: app,
        stdio: "pipe",
      },
    );
  });
  after(async () => {
    if (proc) await stopProc(proc);
    await mesh?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("is not private; holds compiled code only; no tsx or typescript installed", () => {
    assert.notEqual(pkg.private, true);
    const root = join(app, "node_modules", "nats-kv-syncd");
    const all = files(root).map((f) => f.slice(root.length + 1));
    assert.ok(all.includes("dist/services/merger/main.js"), all.join("\n"));
    assert.ok(all.includes("CHANGELOG.md"));
    assert.deepEqual(
      all.filter((f) => f.endsWith(".ts")),
      [],
    );
    assert.equal(existsSync(join(app, "node_modules", "tsx")), false, "tsx installed");
    assert.equal(existsSync(join(app, "node_modules", "typescript")), false, "typescript installed");
  });

  it("syncd --help, syncd --version and every service's --help run from the install", () => {
    const bin = (name: string) => join(app, "node_modules", ".bin", name);
    const env = { ...process.env, NODE_ENV: "production", NODE_OPTIONS: "" };
    const help = spawnSync(bin("syncd"), ["--help"], { env, encoding: "utf8" });
    assert.equal(help.status, 0, help.stderr);
    assert.match(help.stdout, /^usage: syncd/);
    assert.equal(help.stderr, "");
    const version = spawnSync(bin("syncd"), ["--version"], { env, encoding: "utf8" });
    assert.equal(version.stdout.trim(), pkg.version);
    for (const kind of ["clock", "watcher", "merger", "reconciler", "agent"]) {
      const r = spawnSync(bin(`syncd-${kind}`), ["--help"], { env, encoding: "utf8" });
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`^usage: syncd-${kind} --site`));
      assert.equal(r.stderr, "");
    }
  });

  it("an installed service runs against a real site: /readyz answers 200", async () => {
    mesh = await startMesh({ sites: ["a"], services: false });
    const port = await freePort();
    const logFile = join(dir, "clock.log");
    proc = spawnLogged({
      cmd: join(app, "node_modules", ".bin", "syncd-clock"),
      args: ["--site", "a", "-s", mesh.sites.a!.url, "--http-port", String(port), "--http-host", "127.0.0.1"],
      env: { ...process.env, NODE_ENV: "production" },
      logFile,
      marker: "syncd-clock",
    });
    try {
      await waitFor(async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200, {
        timeout: 30_000,
        message: "installed syncd-clock ready",
      });
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${tail(logFile, 20)}`);
    }
    assert.doesNotMatch(readFileSync(logFile, "utf8"), /NOT BUILT|tsx/);
  });
});

describe("a checkout without a fresh build", () => {
  it("refuses under NODE_ENV=production and warns loudly otherwise", () => {
    const dir = mkdtempSync(join(tmpdir(), "syncd-nobuild-"));
    try {
      cpSync(join(REPO, "services"), join(dir, "services"), { recursive: true });
      cpSync(join(REPO, "schemas"), join(dir, "schemas"), { recursive: true });
      cpSync(join(REPO, "package.json"), join(dir, "package.json"));
      symlinkSync(join(REPO, "node_modules"), join(dir, "node_modules"));
      const run = (env: NodeJS.ProcessEnv) =>
        spawnSync(process.execPath, [join(dir, "services/run.mjs"), "merger", "--help"], {
          env: { ...process.env, SYNCD_TSX: "", ...env },
          encoding: "utf8",
        });
      const prod = run({ NODE_ENV: "production" });
      assert.equal(prod.status, 1);
      assert.match(prod.stderr, /NOT BUILT \(dist\/ is missing\) and NODE_ENV=production: refusing/);
      assert.equal(prod.stdout, "");
      const dev = run({ NODE_ENV: "development" });
      assert.equal(dev.status, 0, dev.stderr);
      assert.match(dev.stderr, /WARNING: NOT BUILT/);
      assert.match(dev.stdout, /^usage: syncd-merger/);
      const quiet = run({ NODE_ENV: "production", SYNCD_TSX: "1" });
      assert.equal(quiet.status, 0, quiet.stderr);
      assert.equal(quiet.stderr, "");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
