/**
 * ./scripts/up.sh and ./scripts/down.sh as the README tells a user to run them (in a temp MESH_DIR, on
 * free ports): mesh.json, each site reachable with its four services answering $SRV.PING, a second
 * up.sh starts nothing, down.sh leaves no recorded process alive.
 */
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { connect } from "@nats-io/transport-node";
import { isAlive, readPidFile } from "../scripts/lib/proc.ts";
import { SERVICE_KINDS, pingSite } from "../scripts/lib/services.ts";
import { withUpMesh } from "./helpers.ts";

type MeshJson = {
  hub: { url: string; pid: number | null };
  sites: Record<
    string,
    { url: string; domain: string; node_id: string; pid: number | null; services_dir: string }
  >;
};

/** Every pid the mesh recorded: servers from mesh.json, services from their pid files. */
function recordedPids(mesh: MeshJson): number[] {
  const pids: number[] = [];
  if (mesh.hub.pid) pids.push(mesh.hub.pid);
  for (const s of Object.values(mesh.sites)) {
    if (s.pid) pids.push(s.pid);
    for (const f of readdirSync(s.services_dir).filter((x) => x.endsWith(".pid") && x !== "server.pid")) {
      const pid = readPidFile(path.join(s.services_dir, f));
      if (pid) pids.push(pid);
    }
  }
  return pids.sort((a, b) => a - b);
}

describe("scripts/up.sh and scripts/down.sh", () => {
  const up = withUpMesh("up");
  let mesh: MeshJson;
  let pids: number[] = [];

  test("up.sh starts the mesh and writes mesh.json", () => {
    const r = up.run("up.sh");
    assert.equal(r.code, 0, r.out);
    mesh = JSON.parse(readFileSync(path.join(up.dir, "mesh.json"), "utf8")) as MeshJson;
    assert.match(mesh.hub.url, new RegExp(`^nats://127\\.0\\.0\\.1:${up.env.HUB_PORT}$`));
    assert.deepEqual(Object.keys(mesh.sites), ["a", "b"]);
    const base = Number(up.env.SITE_BASE_PORT);
    assert.equal(mesh.sites.a?.url, `nats://127.0.0.1:${base}`);
    assert.equal(mesh.sites.b?.url, `nats://127.0.0.1:${base + 2}`);
    for (const s of ["a", "b"]) {
      assert.equal(mesh.sites[s]?.domain, s);
      assert.equal(mesh.sites[s]?.node_id, `site-${s}`);
      assert.ok(r.out.includes(mesh.sites[s]?.url ?? "?"), `up.sh prints the URL of site ${s}`);
    }
    assert.match(r.out, /kv put config/);
    pids = recordedPids(mesh);
    assert.equal(pids.length, 3 + 2 * SERVICE_KINDS.length, `recorded pids: ${pids}`);
    for (const pid of pids) assert.ok(isAlive(pid), `pid ${pid} alive`);
  });

  test("each site accepts a connection and its four services answer $SRV.PING", async () => {
    assert.ok(mesh, "up.sh ran");
    for (const [site, s] of Object.entries(mesh.sites)) {
      const nc = await connect({ servers: s.url });
      try {
        const found = await pingSite(nc, site, 300);
        assert.deepEqual(
          found.map((f) => f.kind).sort(),
          [...SERVICE_KINDS].sort(),
          `site ${site}: ${JSON.stringify(found.map((f) => f.name))}`,
        );
        for (const f of found) assert.equal(f.metadata.buckets, "config");
      } finally {
        await nc.close();
      }
    }
  });

  test("a second up.sh says it is running and starts nothing", () => {
    assert.ok(mesh, "up.sh ran");
    const r = up.run("up.sh");
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /already running/);
    const again = JSON.parse(readFileSync(path.join(up.dir, "mesh.json"), "utf8")) as MeshJson;
    assert.deepEqual(recordedPids(again), pids);
    for (const pid of pids) assert.ok(isAlive(pid), `pid ${pid} alive`);
  });

  test("down.sh stops every recorded process and removes the state", () => {
    assert.ok(mesh, "up.sh ran");
    const r = up.run("down.sh");
    assert.equal(r.code, 0, r.out);
    for (const pid of pids) assert.equal(isAlive(pid), false, `pid ${pid} still alive after down.sh`);
    assert.throws(() => readFileSync(path.join(up.dir, "mesh.json")), /ENOENT/);
    // a second down is harmless
    assert.equal(up.run("down.sh").code, 0);
  });
});
