/**
 * up.sh's site ports (scripts/lib/topology.ts planSitePorts): any number of sites gets a layout
 * that leaves the hub's ports alone, or a clear refusal.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { planSitePorts } from "../../scripts/lib/topology.ts";
import { runScript } from "../helpers.ts";

const HUB = [7222, 7223, 7422];

test("X the default layout keeps a, b, c on 4222, 5222, 6222 and puts the 4th site past the hub's 7222", () => {
  const p = planSitePorts(12, 4222, 1000, HUB, true)!;
  assert.deepEqual(
    p.slice(0, 5).map((x) => x.client),
    [4222, 5222, 6222, 8222, 9222],
  );
  assert.equal(p.length, 12);
  const all = p.flatMap((x) => [x.client, x.http]);
  assert.equal(new Set([...all, ...HUB]).size, all.length + HUB.length, "no port twice");
  assert.ok(p.every((x) => x.http === x.client + 1));
});

test("X a mesh too large for steps of 1000 takes steps of 10 unless a step was asked for", () => {
  const p = planSitePorts(1000, 4222, 1000, HUB, true)!;
  assert.equal(p.length, 1000);
  assert.deepEqual(
    p.slice(0, 3).map((x) => x.client),
    [4222, 4232, 4242],
  );
  const all = p.flatMap((x) => [x.client, x.http]);
  assert.equal(new Set([...all, ...HUB]).size, all.length + HUB.length, "no port twice");
  assert.ok(all.every((x) => x <= 65535));
  assert.equal(planSitePorts(100, 4222, 1000, HUB, false), undefined);
  assert.equal(planSitePorts(10_000, 4222, 1000, HUB, true), undefined);
});

test("X up.sh refuses a step that does not fit, naming the variables, before it starts anything", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "syncd-port-plan-"));
  try {
    const sites = Array.from({ length: 40 }, (_, i) => `s${i}`).join(" ");
    const r = runScript("up.sh", {
      ...process.env,
      MESH_DIR: dir,
      SITES: sites,
      SITE_BASE_PORT: "4222",
      SITE_PORT_STEP: "2000",
      NODE_TEST_CONTEXT: undefined,
    });
    assert.notEqual(r.code, 0, r.out);
    assert.match(r.out, /40 sites do not fit below port 65535 from SITE_BASE_PORT=4222 in steps of 2000/);
    assert.match(r.out, /set SITE_BASE_PORT\/SITE_PORT_STEP/);
    assert.equal(
      existsSync(path.join(dir, "mesh.json")),
      false,
      `nothing started: ${readdirSync(dir).join(", ")}`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
