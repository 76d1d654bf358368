/**
 * deploy/nats/site-users.conf.template: the four services work as user `syncd` with only the
 * permissions it grants (replication a → b, hand-made ops, membership at the hub, tombstone
 * collection), and the users are refused what they must not do (a site's services forging another
 * site's ops, an app forging a site's op stream). A site whose permissions deny the collection's
 * purges raises TOMBSTONE_GC_FAILED until they are allowed again.
 */
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import {
  Conditions,
  type ReconcilerEntriesResponse,
  type ReconcilerRunResponse,
  type ReconcilerStatusResponse,
  endpointSubject,
  kvStream,
  kvSubject,
  metaBucket,
  requestJson,
  run as syncd,
} from "../services/mod.ts";
import { type Mesh, eventually, startMesh, waitFor } from "./harness/mesh.ts";
import { plantVersion } from "./helpers.ts";

const users = { syncd: "syncd-secret", app: "app-secret", admin: "admin-secret" };

/** Publish on `subject` as the connection's user; resolve with the server's permission error, if any. */
async function publishError(nc: NatsConnection, subject: string): Promise<string | undefined> {
  let seen: string | undefined;
  const watch = (async () => {
    for await (const s of nc.status()) {
      if (s.type === "error") {
        seen = String(s.error?.message ?? s.error);
        return;
      }
    }
  })();
  nc.publish(subject, "{}");
  await nc.flush();
  await eventually(() => assert.ok(seen), { timeout: 1000 }).catch(() => {});
  void watch;
  return seen;
}

describe("I7 deploy: per-site users (site-users.conf.template)", () => {
  let mesh: Mesh;
  const saved = { ...process.env };

  before(async () => {
    // tombstones old enough within moments, a collection pass every 300 ms
    process.env.SYNCD_TOMBSTONE_MIN_AGE_MS = "1000";
    process.env.SYNCD_TOMBSTONE_GC_MS = "300";
    // hub registration rounds every 500 ms: their reads run under the template's permissions too
    process.env.SYNCD_HUB_RECHECK_MS = "500";
    mesh = await startMesh({ users, serviceArgs: ["--reconcile-interval", "0"] });
  });
  after(async () => {
    process.env = saved;
    await mesh?.stop();
  });

  test("the services run as syncd; an app's write replicates to the other site", async () => {
    const app = await mesh.connect("a", { user: "app", pass: users.app });
    const kvApp = await new Kvm(app).open("config");
    await kvApp.put("auth.k", "v1");
    const kvB = await mesh.kv("b");
    await eventually(async () => assert.equal((await kvB.get("auth.k"))?.string(), "v1"), {
      timeout: 15000,
      message: `a -> b\n${mesh.logs(undefined, 10)}`,
    });
  });

  test("an app's hand-made op on rep.kv.ops is merged and replicated", async () => {
    const app = await mesh.connect("a", { user: "app", pass: users.app });
    const op = {
      op: "put",
      bucket: "config",
      key: "auth.hand",
      value: "h",
      ts: Date.now() * 1000,
      node_id: "by-hand",
    };
    app.publish("rep.kv.ops", JSON.stringify(op));
    await app.flush();
    const kvB = await mesh.kv("b");
    await eventually(async () => assert.equal((await kvB.get("auth.hand"))?.string(), "h"), {
      timeout: 15000,
      message: "hand-made op at b",
    });
  });

  test("syncd of site a may not publish site b's ops nor use b's JetStream", async () => {
    const syncd = await mesh.connect("a", { user: "syncd", pass: users.syncd });
    assert.match((await publishError(syncd, "rep.kv.ops.b")) ?? "no error", /permissions violation/i);
    assert.match((await publishError(syncd, "$JS.b.API.INFO")) ?? "no error", /permissions violation/i);
    assert.match((await publishError(syncd, "syncd.b.merger.get")) ?? "no error", /permissions violation/i);
    assert.match((await publishError(syncd, "syncd.b.clock.tick")) ?? "no error", /permissions violation/i);
    // its own ones are fine
    assert.equal(await publishError(syncd, "syncd.a.nothing"), undefined);
  });

  test("the template gives the services all they use: no service logged a permissions violation", async () => {
    // a few registration rounds (cheap and full), stamps, merges and tombstone passes have run
    await new Promise((r) => setTimeout(r, 2000));
    const denied = mesh
      .logs(undefined, 100_000)
      .split("\n")
      .filter((l) => /permissions violation/i.test(l));
    assert.deepEqual(denied.slice(0, 5), []);
  });

  test("an app may not forge a site's op stream nor call merge", async () => {
    const app = await mesh.connect("a", { user: "app", pass: users.app });
    assert.match((await publishError(app, "rep.kv.ops.a")) ?? "no error", /permissions violation/i);
    assert.match((await publishError(app, "syncd.a.merger.merge")) ?? "no error", /permissions violation/i);
    assert.match((await publishError(app, "$KV.config_meta.x")) ?? "no error", /permissions violation/i);
  });

  test("anti-entropy (digest, entries, pushed merges between sites) works as syncd", async () => {
    // a difference behind the services' back on each site: bucket entry with version headers + _meta
    const plant = async (site: string, key: string, value: string) => {
      const nc = await mesh.connect(site);
      await plantVersion(nc, { key, value, ts: Date.now() * 1000, node_id: `site-${site}`, legacy: true });
      await waitFor(
        async () =>
          (
            await requestJson<ReconcilerEntriesResponse>(nc, endpointSubject(site, "reconciler", "entries"), {
              bucket: "config",
              keys: [key],
            })
          ).value.entries.length === 1,
        { message: `${key} indexed at ${site}` },
      );
    };
    await plant("a", "oob.a", "only at a");
    await plant("b", "oob.b", "only at b");
    const admin = await mesh.connect("a");
    const { value } = await requestJson<ReconcilerRunResponse>(
      admin,
      endpointSubject("a", "reconciler", "run"),
      { peers: ["b"] },
      { timeout: 60_000 },
    );
    const run = value.runs[0];
    assert.ok(run, JSON.stringify(value));
    assert.equal(run.error, undefined, `${JSON.stringify(run)}\n${mesh.logs(undefined, 10)}`);
    assert.equal(run.pulled, 1);
    assert.equal(run.pushed, 1);
    const kvA = await mesh.kv("a");
    const kvB = await mesh.kv("b");
    assert.equal((await kvA.get("oob.b"))?.string(), "only at b");
    await eventually(async () => assert.equal((await kvB.get("oob.a"))?.string(), "only at a"));
  });

  test("no password, no connection", async () => {
    await assert.rejects(
      () => mesh.connect("a", { user: "app", pass: "wrong", maxReconnectAttempts: 0 }),
      /auth/i,
    );
  });

  test("I1 tombstones are collected as syncd (members bucket at the hub, purges of the buckets only); purges denied: TOMBSTONE_GC_FAILED (warn) until allowed again", async () => {
    const admin = { a: await mesh.connect("a"), b: await mesh.connect("b") };
    const status = (s: "a" | "b") =>
      requestJson<ReconcilerStatusResponse>(admin[s], endpointSubject(s, "reconciler", "status"), {}).then(
        (r) => r.value,
      );
    const gcFailed = async (s: "a" | "b") =>
      (await status(s)).conditions?.find((c) => c.code === Conditions.tombstoneGcFailed);
    /** neither the `_meta` entry nor the delete marker of `key` is left at `site` */
    const collected = async (s: "a" | "b", key: string) => {
      const jsm = await jetstreamManager(admin[s]);
      const last = (stream: string, subj: string) =>
        jsm.streams.getMessage(stream, { last_by_subj: subj }).catch(() => null);
      return (
        (await last(kvStream(metaBucket("config")), kvSubject(metaBucket("config"), key))) === null &&
        (await last(kvStream("config"), kvSubject("config", key))) === null
      );
    };
    for (const s of ["a", "b"] as const)
      await waitFor(async () => (await status(s)).membership?.state === "member", {
        timeout: 30_000,
        message: `${s} never joined the mesh as syncd:\n${mesh.logs(s, 20)}`,
      });
    const app = await new Kvm(await mesh.connect("a", { user: "app", pass: users.app })).open("config");
    const kvB = await mesh.kv("b");
    const deleteEverywhere = async (key: string) => {
      await app.put(key, "v");
      await eventually(async () => assert.equal((await kvB.get(key))?.string(), "v"), { timeout: 15000 });
      await app.delete(key);
      await eventually(async () => assert.equal((await kvB.get(key))?.operation, "DEL"), { timeout: 15000 });
    };
    await deleteEverywhere("gc.one");
    for (const s of ["a", "b"] as const)
      await waitFor(() => collected(s, "gc.one"), {
        timeout: 30_000,
        message: `${s} never collected the tombstone of gc.one:\n${mesh.logs(s, 20)}`,
      });
    assert.equal(await gcFailed("a"), undefined);

    // site a's users without the purge permission (the template before #12): reload its server
    const usersConf = path.join(mesh.topology.site("a").dir, "users.conf");
    const allowed = readFileSync(usersConf, "utf8");
    const denied = allowed.replace(/^\s*"\$JS\.API\.STREAM\.PURGE\.KV_config(_meta)?".*$/gm, "");
    assert.notEqual(denied, allowed, "no purge permission to remove in users.conf");
    const reload = (text: string) => {
      writeFileSync(usersConf, text, { mode: 0o600 });
      process.kill(mesh.topology.site("a").pid ?? 0, "SIGHUP");
    };
    reload(denied);
    try {
      await deleteEverywhere("gc.two");
      const c = await waitFor(() => gcFailed("a"), {
        timeout: 30_000,
        message: `a never raised ${Conditions.tombstoneGcFailed}:\n${mesh.logs("a", 20)}`,
      });
      assert.equal(c.severity, "warn");
      assert.match(c.message, /permissions violation/i);
      assert.equal(await collected("a", "gc.two"), false, "a collected without the permission");
      // `syncd status` shows it (from the reconciler's micro STATS); a warning: --check passes
      const out: string[] = [];
      const auth = ["--user", "admin", "--password", users.admin];
      const code = await syncd(
        ["status", "--check", "--json", "--site", "a", "--server", mesh.sites.a!.url, ...auth],
        { out: (t) => void out.push(t), err: (t) => void out.push(t) },
        {},
      );
      const shown = (JSON.parse(out.join("\n")) as { sites: { conditions: { code: string }[] }[] }).sites
        .flatMap((x) => x.conditions)
        .map((x) => x.code);
      assert.ok(shown.includes(Conditions.tombstoneGcFailed), out.join("\n"));
      assert.equal(code, 0, out.join("\n"));
    } finally {
      reload(allowed);
    }
    await waitFor(() => collected("a", "gc.two"), {
      timeout: 30_000,
      message: `a never collected gc.two once allowed again:\n${mesh.logs("a", 20)}`,
    });
    await waitFor(async () => (await gcFailed("a")) === undefined, {
      timeout: 30_000,
      message: `${Conditions.tombstoneGcFailed} never cleared at a`,
    });
  });
});
