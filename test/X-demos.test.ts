/**
 * The demo scripts (scripts/demo-*.sh) as a user runs them: one local mesh from ./scripts/up.sh (a
 * temp MESH_DIR, free ports), every demo one after the other, each must exit 0 and print what it
 * observed; the mesh is whole again after the demos that stop parts of it; ./scripts/down.sh at the
 * end. Without a mesh a demo refuses with a clear message.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { REPO_ROOT } from "../scripts/lib/topology.ts";
import { withUpMesh } from "./helpers.ts";

/** What each demo must print besides its PASS line (its key observations). */
const DEMOS: { script: string; expect: RegExp[] }[] = [
  {
    script: "demo-replication.sh",
    expect: [
      /^\$ syncd --server nats:\/\/127\.0\.0\.1:\d+ put config replication\.\d+\.theme dark --site a$/m,
      /=> replication\.\d+\.theme is "dark" at every site \(a, b\), same version/,
      /=> replication\.\d+\.greeting is "hello, wörld" at every site/,
      /=> replication\.\d+\.theme is "light" at every site/,
    ],
  },
  {
    script: "demo-conflict.sh",
    expect: [
      /=> 2 writes of conflict\.\d+\.color within [\d.]+ ms/,
      /=> conflict\.\d+\.color is "(dark|light)" at every site \(a, b\), same version/,
      /site [ab]: conflict \((stale_op|overwritten)\) — lost "(dark|light)"/,
      /=> conflict\.\d+\.color is "(dark|light), again" at every site/,
    ],
  },
  {
    script: "demo-delete.sh",
    expect: [
      /=> delete\.\d+\.feature is "on" at every site/,
      /=> delete\.\d+\.feature is deleted \(tombstone\) at every site \(a, b\), same version/,
      /site a's merger consumed it/,
      /site a: conflict \(stale_op\) — lost "on" .* won a delete/,
      /=> delete\.\d+\.feature is "on again" at every site/,
    ],
  },
  {
    script: "demo-partition.sh",
    expect: [
      /hub stopped/,
      /=> partition\.\d+\.theme is "dark" at site a/,
      /=> partition\.\d+\.theme is "light" at site b/,
      /=> partition\.\d+\.lang is absent \(no value, no version\) at site a/,
      /hub started/,
      /=> partition\.\d+\.lang is "es" at every site/,
      /=> partition\.\d+\.size is "xl" at every site/,
      /=> partition\.\d+\.theme is "light" at every site \(a, b\), same version/,
      /conflict \((stale_op|overwritten)\) — lost "dark"/,
    ],
  },
  {
    script: "demo-replay.sh",
    expect: [
      /stopping site b services/,
      /site b: SYNCD_FEED_b holds [3-9] op\(s\) waiting for its merger/,
      /=> replay\.\d+\.mode is absent \(no value, no version\) at site b/,
      /=> replay\.\d+\.mode is "maintenance" at every site/,
      /=> replay\.\d+\.size is "xl" at every site/,
      /=> replay\.\d+\.banner is deleted \(tombstone\) at every site/,
    ],
  },
  {
    script: "demo-reconcile.sh",
    expect: [
      /site b: wrote "only at b" to config\/reconcile\.\d+\.only-b and its _meta version/,
      /=> reconcile\.\d+\.only-b is absent \(no value, no version\) at site a/,
      /=> reconcile\.\d+\.shared is "v1" at site b/,
      /^\$ syncd --server nats:\/\/127\.0\.0\.1:\d+ reconcile --site a$/m,
      /=> reconcile\.\d+\.only-b is "only at b" at every site/,
      /=> reconcile\.\d+\.shared is "v2, only at a" at every site/,
    ],
  },
];

describe("scripts/demo-*.sh against the local mesh of ./scripts/up.sh", () => {
  const mesh = withUpMesh("demos", {
    DEMO_WAIT: "90",
    DEMO_START: undefined,
    DEMO_RUN: undefined,
    SECURE: undefined,
  });
  let up = false;

  test("every demo script is covered here", () => {
    const scripts = readdirSync(path.join(REPO_ROOT, "scripts"))
      .filter((f) => /^demo-.*\.sh$/.test(f))
      .sort();
    assert.deepEqual(scripts, DEMOS.map((d) => d.script).sort());
  });

  test("without a mesh a demo says to run ./scripts/up.sh first", () => {
    const r = mesh.run("demo-replication.sh", 60_000);
    assert.notEqual(r.code, 0, r.out);
    assert.match(r.out, /run \.\/scripts\/up\.sh first/);
    assert.match(r.out, /^FAIL demo-replication: /m);
  });

  test("up.sh starts the mesh", () => {
    const r = mesh.run("up.sh");
    assert.equal(r.code, 0, r.out);
    up = true;
  });

  for (const d of DEMOS) {
    test(d.script, () => {
      assert.ok(up, "the mesh is up");
      const r = mesh.run(d.script, 150_000);
      const name = d.script.replace(/\.sh$/, "");
      assert.equal(r.code, 0, `${d.script} exited ${r.code} after ${r.ms} ms:\n${r.out}`);
      assert.match(r.out, new RegExp(`^PASS ${name}: `, "m"), r.out);
      assert.doesNotMatch(r.out, /^FAIL /m, r.out);
      for (const re of d.expect) assert.match(r.out, re, `${d.script} did not print ${re}:\n${r.out}`);
    });
  }

  test("after the demos the mesh is whole again (hub and site b's services restored)", () => {
    assert.ok(up, "the mesh is up");
    const r = spawnSync(process.execPath, ["--import", "tsx", "scripts/lib/demo.ts", "env"], {
      cwd: REPO_ROOT,
      env: mesh.env,
      encoding: "utf8",
      timeout: 30_000,
    });
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
  });

  test("down.sh stops the mesh", () => {
    assert.ok(up, "the mesh is up");
    const r = mesh.run("down.sh");
    assert.equal(r.code, 0, r.out);
  });
});
