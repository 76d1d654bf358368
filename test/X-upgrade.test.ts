/**
 * The compatibility rule and the rolling upgrade (README "Release, install, upgrade"): readers ignore
 * what they do not know (an op and a `_meta` record with extra fields), and a mesh whose sites mix
 * instances of this checkout with instances of an older commit replicates both ways while one site
 * is upgraded instance by instance.
 */
import assert from "node:assert/strict";
import { execFileSync, execSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { KV } from "@nats-io/kv";
import { type Proc, spawnLogged, stopProc, tail } from "../scripts/lib/proc.ts";
import { OPS_INGRESS, parseOp } from "../services/mod.ts";
import { type Mesh, startMesh, waitFor } from "./harness/mesh.ts";

const REPO = join(fileURLToPath(import.meta.url), "..", "..");
/** The older release to mix with: the last commit before the release work (override: SYNCD_OLD_COMMIT). */
const OLD_COMMIT = process.env.SYNCD_OLD_COMMIT ?? "3029b1e";
const KINDS = ["clock", "watcher", "merger", "reconciler"] as const;

function oldTree(): string | undefined {
  try {
    execFileSync("git", ["rev-parse", "--verify", `${OLD_COMMIT}^{commit}`], { cwd: REPO, stdio: "pipe" });
  } catch {
    return undefined;
  }
  const dir = mkdtempSync(join(tmpdir(), "syncd-old-"));
  execSync(`git archive ${OLD_COMMIT} services schemas package.json | tar -x -C ${dir}`, { cwd: REPO });
  symlinkSync(join(REPO, "node_modules"), join(dir, "node_modules"));
  return dir;
}

describe("readers ignore what they do not know", () => {
  it("an op with extra fields parses to the same op, the extra fields aside", () => {
    const base = { op: "put", bucket: "config", key: "k", value: "v", ts: 7, node_id: "site-a" };
    const parsed = parseOp(new TextEncoder().encode(JSON.stringify({ ...base, v: 2, future: { x: 1 } })));
    const { v: _v, future: _f, ...rest } = parsed as typeof parsed & { v?: unknown; future?: unknown };
    assert.deepEqual(rest, parseOp(new TextEncoder().encode(JSON.stringify(base))));
  });
});

describe("rolling upgrade: old and new instances mixed at one site and across sites", () => {
  const old = oldTree();
  let mesh: Mesh;
  const procs = new Map<string, Proc>();
  const logDir = mkdtempSync(join(tmpdir(), "syncd-upgrade-logs-"));

  const start = (name: string, tree: string, site: string, kind: string) => {
    const p = spawnLogged({
      cmd: process.execPath,
      args: [
        join(tree, "services/run.mjs"),
        kind,
        "--site",
        site,
        "--nats-url",
        mesh.sites[site]!.url,
        "--reconcile-interval",
        "0",
        "--instance",
        name,
      ],
      cwd: tree,
      env: { ...process.env, NODE_ENV: "development" },
      logFile: join(logDir, `${name}.log`),
      marker: name,
    });
    procs.set(name, p);
  };
  const stop = async (name: string) => {
    await stopProc(procs.get(name)!);
    procs.delete(name);
  };
  const logs = () =>
    [...procs.keys()].map((n) => `--- ${n}\n${tail(join(logDir, `${n}.log`), 8)}`).join("\n");
  const travels = async (from: KV, to: KV, key: string, value: string) => {
    await from.put(key, value);
    try {
      await waitFor(async () => (await to.get(key))?.string() === value, {
        timeout: 45_000,
        message: `${key} travels`,
      });
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${logs()}`);
    }
  };

  before(async () => {
    if (!old) return;
    // the older release reaches the other sites without the hub relay: a mixed mesh runs on a hub
    // that does not isolate leaf interest (README "Release, install, upgrade": isolate afterwards)
    mesh = await startMesh({ sites: ["a", "b"], services: false, isolate: false });
  });
  after(async () => {
    await Promise.all([...procs.values()].map((p) => stopProc(p)));
    await mesh?.stop();
    if (old) rmSync(old, { recursive: true, force: true });
    rmSync(logDir, { recursive: true, force: true });
  });

  it(
    "an older-release mesh: site a upgraded one instance at a time (an old merger kept), then site b",
    { skip: !old && `commit ${OLD_COMMIT} not in this clone` },
    async () => {
      mkdirSync(logDir, { recursive: true });
      // a mesh on the older release (full mesh: its reconcilers add the peer sources) ...
      for (const kind of KINDS) {
        start(`a-old-${kind}`, old!, "a", kind);
        start(`b-old-${kind}`, old!, "b", kind);
      }
      const [a, b] = [await mesh.kv("a"), await mesh.kv("b")];
      await travels(a, b, "up.0", "old-to-old");
      await travels(b, a, "up.00", "old-to-old-back");
      // ... then site a upgraded one instance at a time: b's writes keep reaching a
      for (const kind of KINDS) {
        start(`a-new-${kind}`, REPO, "a", kind);
        await travels(b, a, `up.a.${kind}.mixed`, "during");
        if (kind !== "merger") await stop(`a-old-${kind}`);
        await travels(b, a, `up.a.${kind}.after`, "after");
      }
      // an upgraded site's writes reach a site still on the old version once it runs the new merger
      // (README "Migration from the full mesh"); an old site's writes reach the upgraded ones at once
      await a.put("up.1", "a-new-to-b-old");
      await travels(b, a, "up.2", "b-old-to-a-mixed");
      // a hand-made op with fields this version does not know, and a _meta record with one
      const nc = await mesh.connect("a");
      await nc.request(
        OPS_INGRESS,
        JSON.stringify({
          op: "put",
          bucket: "config",
          key: "up.3",
          value: "extra",
          ts: Date.now() * 1000,
          node_id: "ops-tool",
          v: 1,
          note: "x",
        }),
      );
      await waitFor(async () => (await a.get("up.3"))?.string() === "extra", {
        timeout: 45_000,
        message: "op with extra fields",
      });
      const metaA = await mesh.kv("a", "config_meta");
      const e = await metaA.get("up.3");
      await metaA.put("up.3", JSON.stringify({ ...(JSON.parse(e!.string()) as object), future: true }));
      await travels(b, a, "up.3", "over-a-meta-with-an-extra-field");

      // upgrade b: per kind, start the new instance, then stop the old one; replication goes on
      for (const kind of KINDS) {
        start(`b-new-${kind}`, REPO, "b", kind);
        await travels(b, a, `up.b.${kind}.mixed`, "during");
        await stop(`b-old-${kind}`);
        await travels(b, a, `up.b.${kind}.after`, "after");
      }
      await stop("a-old-merger");
      await travels(a, b, "up.done", "all-new");
      // what a wrote while b was old has arrived with b's upgrade
      await waitFor(async () => (await b.get("up.1"))?.string() === "a-new-to-b-old", {
        timeout: 45_000,
        message: "a's write from before b's upgrade",
      });
    },
  );
});
