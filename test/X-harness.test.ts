/**
 * Self-test of the test harness and of the site config it renders: core request/reply crosses the
 * hub (directly, or through the hub relay when the hub isolates leaf interest), a stopped hub partitions the sites and a restarted one heals them, `rep.kv.ops` stays in its
 * site, and no server outlives a crashed test process.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import type { NatsConnection } from "@nats-io/nats-core";
import { isAlive } from "../scripts/lib/proc.ts";
import { findNatsServer, supportsLeafIsolation } from "../scripts/lib/topology.ts";
import { relaySubject, requestAnywhere } from "../services/mod.ts";
import { type Mesh, eventually, startMesh, waitFor } from "./harness/mesh.ts";

const enc = new TextEncoder();
/** A request from a connection at one site to a responder at another: direct or through the relay. */
const ask = (nc: NatsConnection, subject: string, text: string) =>
  requestAnywhere(nc, subject, { data: enc.encode(text) }, 500);

describe("harness: startMesh({services: false})", () => {
  let mesh: Mesh;
  let a: NatsConnection;
  let b: NatsConnection;

  before(async () => {
    mesh = await startMesh({ services: false });
    a = await mesh.connect("a");
    b = await mesh.connect("b");
    b.subscribe("harness.echo", { callback: (_e, m) => void m.respond(`b got ${m.string()}`) });
    await b.flush();
  });
  after(async () => {
    await mesh?.stop();
  });

  test("shape", () => {
    assert.deepEqual(Object.keys(mesh.sites), ["a", "b"]);
    assert.equal(mesh.sites.a?.domain, "a");
    assert.equal(mesh.sites.b?.nodeId, "site-b");
    assert.match(mesh.hub.url, /^nats:\/\/127\.0\.0\.1:\d+$/);
    assert.notEqual(mesh.sites.a?.url, mesh.sites.b?.url);
  });

  test("the hub isolates leaf interest by default when its server can (2.12+): then a reaches b through the relay only", async () => {
    if (process.env.SYNCD_HUB_ISOLATE === undefined)
      assert.equal(mesh.topology.hub.isolate === true, supportsLeafIsolation(findNatsServer()));
    if (mesh.topology.hub.isolate)
      await assert.rejects(a.request("harness.echo", "direct", { timeout: 1000 }), /no responders/i);
  });

  test("a core request from a reaches a responder on b", async () => {
    const r = await waitFor(() => ask(a, "harness.echo", "hi"), {
      message: "a -> b request",
    });
    assert.equal(r.string(), "b got hi");
  });

  test("rep.kv.ops stays in its site; rep.kv.ops.<site> crosses the hub", async () => {
    const got: string[] = [];
    b.subscribe("rep.kv.ops", { callback: (_e, m) => void got.push(`ingress ${m.string()}`) });
    b.subscribe("rep.kv.ops.a", { callback: (_e, m) => void got.push(`own ${m.string()}`) });
    await b.flush();
    // interest needs a few ms to reach a: wait until the site-scoped subject arrives
    await waitFor(
      async () => {
        for (const subject of ["rep.kv.ops", relaySubject("rep.kv.ops")]) a.publish(subject, "x");
        for (const subject of ["rep.kv.ops.a", relaySubject("rep.kv.ops.a")]) a.publish(subject, "y");
        await a.flush();
        await new Promise((r) => setTimeout(r, 20));
        return got.includes("own y");
      },
      { message: "rep.kv.ops.a from a at b" },
    );
    assert.ok(!got.some((g) => g.startsWith("ingress")), `rep.kv.ops crossed the leaf: ${got}`);
  });

  test("kv(site) opens (creating) the site's own bucket", async () => {
    const kva = await mesh.kv("a");
    const kvb = await mesh.kv("b");
    await kva.put("k", "from-a");
    assert.equal((await kva.get("k"))?.string(), "from-a");
    assert.equal(await kvb.get("k"), null);
  });

  test("stopHub() partitions: no responders; startHub() heals", async () => {
    await mesh.stopHub();
    const err = await waitFor(
      async () => {
        try {
          await ask(a, "harness.echo", "cut");
          return undefined;
        } catch (e) {
          return /no responders/i.test(String(e)) ? String(e) : undefined;
        }
      },
      { timeout: 5000, message: "no responders while the hub is down" },
    );
    assert.match(err, /no responders/i);
    await mesh.startHub();
    await eventually(async () => {
      const r = await ask(a, "harness.echo", "healed");
      assert.equal(r.string(), "b got healed");
    });
  });

  test("stopServer()/startServer() restarts a site's server with its data", async () => {
    await mesh.stopServer("a");
    await mesh.startServer("a");
    const kva = await mesh.kv("a");
    await eventually(async () => assert.equal((await kva.get("k"))?.string(), "from-a"));
  });

  test("addSite() joins a third site", async () => {
    const c = await mesh.addSite("c", { services: false });
    assert.equal(c.domain, "c");
    const nc = await mesh.connect("c");
    const r = await waitFor(() => ask(nc, "harness.echo", "from c"), {
      message: "c -> b",
    });
    assert.equal(r.string(), "b got from c");
  });
});

test("no server outlives a crashed test process", () => {
  const code = `
    import { startMesh } from "./test/harness/mesh.ts";
    const mesh = await startMesh({ services: false, sites: ["a"] });
    console.log(JSON.stringify([mesh.topology.hub.pid, mesh.topology.site("a").pid, mesh.dir]));
    throw new Error("crash");
  `;
  const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code], {
    encoding: "utf8",
    timeout: 30000,
  });
  assert.notEqual(r.status, 0);
  const [hub, site, dir] = JSON.parse(r.stdout.trim().split("\n").pop() ?? "[]") as [number, number, string];
  assert.ok(hub && site && dir, r.stdout + r.stderr);
  for (const pid of [hub, site]) assert.equal(isAlive(pid), false, `pid ${pid} still alive`);
  assert.equal(existsSync(dir), false, `${dir} left behind`);
});

test("no server outlives a test process stopped by SIGTERM", async () => {
  const code = `
    import { startMesh } from "./test/harness/mesh.ts";
    const mesh = await startMesh({ services: false, sites: ["a"] });
    console.log(JSON.stringify([mesh.topology.hub.pid, mesh.topology.site("a").pid, mesh.dir]));
    setInterval(() => {}, 1000);
  `;
  const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const [hub, site, dir] = await new Promise<[number, number, string]>((resolve, reject) => {
    let buf = "";
    child.stdout.on("data", (d: Buffer) => {
      buf += d.toString();
      if (buf.includes("\n")) resolve(JSON.parse(buf.split("\n")[0] as string) as [number, number, string]);
    });
    child.once("exit", (c) => reject(new Error(`child exited early (${c})`)));
  });
  const pids = [hub, site];
  for (const pid of pids) assert.ok(isAlive(pid));
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await exited;
  await waitFor(() => pids.every((pid) => !isAlive(pid)), { timeout: 5000, message: "servers gone" });
  assert.equal(existsSync(dir), false, `${dir} left behind`);
});
