/**
 * I7, locked doors: the secured mesh (deploy/SECURITY.md) against real servers. Users and TLS:
 * - every site requires TLS and a user; the hub requires TLS and takes only admin; its leaf listener
 *   requires TLS with a client certificate (mutual) and the leaf password: a server without either
 *   does not join the mesh;
 * - the mesh converges over the TLS leaf connections, with the services as `syncd` and writes as `app`
 *   (puts, deletes, both directions, anti-entropy run as app);
 * - nobody publishes what they must not: app and reader no op subject of a site, no journal, no merge,
 *   no `_meta`/clock write, no tampering with the services' durable consumers; reader no write at all
 *   (and it can read: kv get/keys/watch, micro discovery, status and get endpoints); a site's syncd
 *   user nothing of another site (op subject, journal, `$JS.<domain>.API`, its member record) and
 *   no destructive JetStream call even on its own site but the purges of tombstone collection;
 * - no password (syncd, app, reader, admin, leaf, nor a wrong one tried) appears in any server or
 *   service log, also after reconnects and refused logins;
 * - `SECURE=1 ./scripts/up.sh` starts such a mesh with per-site passwords and down.sh removes them.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { type NatsConnection, headers as natsHeaders } from "@nats-io/nats-core";
import { connect } from "@nats-io/transport-node";
import { type Proc, freePort, getJson, spawnLogged, stopProc } from "../scripts/lib/proc.ts";
import { SERVICE_KINDS, pingSite } from "../scripts/lib/services.ts";
import {
  REPO_ROOT,
  findNatsServer,
  randomPassword,
  renderSecureSiteConf,
  renderSiteUsersConf,
} from "../scripts/lib/topology.ts";
import {
  Durables,
  Headers,
  type ReconcilerRunResponse,
  Streams,
  endpointSubject,
  kvStream,
  kvSubject,
  requestAnywhere,
  requestJson,
} from "../services/mod.ts";
import { type Mesh, eventually, sleep, startMesh, waitFor } from "./harness/mesh.ts";
import { withUpMesh } from "./helpers.ts";

/** Distinct, greppable passwords. */
const users = {
  syncd: `Syncd-${randomPassword(9)}`,
  app: `App-${randomPassword(9)}`,
  admin: `Admin-${randomPassword(9)}`,
  reader: `Reader-${randomPassword(9)}`,
};
const leafPassword = `Leaf-${randomPassword(9)}`;
/** Passwords tried and refused along the way: they must not be logged either. */
const wrongGuesses = [`Wrong-${randomPassword(9)}`, `WrongLeaf-${randomPassword(9)}`];

/**
 * Publishes each subject and resolves with those the server did NOT refuse with a permissions
 * violation (so `[]` = all refused). One status watcher per call; errors name the subject.
 */
async function notRefused(nc: NatsConnection, subjects: string[], waitMs = 1500): Promise<string[]> {
  const refused = new Set<string>();
  const watch = (async () => {
    for await (const s of nc.status()) {
      if (s.type !== "error") continue;
      const m = /Permissions Violation for Publish to "([^"]+)"/i.exec(String(s.error?.message ?? ""));
      if (m) refused.add(m[1] as string);
    }
  })();
  void watch;
  for (const subject of subjects) nc.publish(subject, "{}");
  await nc.flush();
  const t0 = Date.now();
  while (subjects.some((s) => !refused.has(s)) && Date.now() - t0 < waitMs) await sleep(20);
  return subjects.filter((s) => !refused.has(s));
}

/** Every file named *.log under `dir`. */
function logFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...logFiles(p));
    else if (e.name.endsWith(".log")) out.push(p);
  }
  return out;
}

/** The log files (under `dir`) that contain any of the secrets: [file, secret names]. */
function leaks(dir: string, secrets: Record<string, string>): string[] {
  const out: string[] = [];
  for (const f of logFiles(dir)) {
    const text = readFileSync(f, "utf8");
    const found = Object.entries(secrets)
      .filter(([, v]) => text.includes(v))
      .map(([k]) => k);
    if (found.length) out.push(`${f}: ${found.join(", ")}`);
  }
  return out;
}

/** The first line a server sends on a plain TCP connection (its INFO). */
function infoLine(port: number): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("error", reject);
    s.once("data", (d) => {
      s.destroy();
      const line = d.toString().split("\r\n")[0] ?? "";
      resolve(JSON.parse(line.replace(/^INFO\s+/, "")) as Record<string, unknown>);
    });
  });
}

/** The services' durable consumers at site a, as JetStream API subjects name them. */
const durableIn = `${Streams.in("a")}.${Durables.merger}`;
const durableKv = `${kvStream("config")}.${Durables.watcher("a", "config")}`;

describe("I7 security: the secured mesh (users + TLS)", () => {
  let mesh: Mesh;
  const rogues: Proc[] = [];

  before(async () => {
    mesh = await startMesh({
      users,
      tls: { leafPassword },
      serviceArgs: ["--reconcile-interval", "0"],
    });
  });
  after(async () => {
    await Promise.all(rogues.map((p) => stopProc(p)));
    await mesh?.stop();
  });

  test("TLS on every client port and mutual TLS + a password on the leaf listener; no anonymous client", async () => {
    const hubVarz = await getJson(`${mesh.topology.hub.httpUrl}/varz`);
    assert.equal(hubVarz?.tls_required, true, "hub client port requires TLS");
    assert.equal(hubVarz?.auth_required, true, "hub client port requires a user");
    const leaf = hubVarz?.leaf as Record<string, unknown> | undefined;
    assert.equal(leaf?.tls_required, true, "hub leaf listener requires TLS");
    assert.equal(leaf?.tls_verify, true, "hub leaf listener verifies client certificates");
    const leafInfo = await infoLine(mesh.topology.hub.leafPort);
    assert.equal(leafInfo.auth_required, true, "hub leaf listener requires a user");
    assert.equal((await getJson(`${mesh.topology.hub.httpUrl}/leafz`))?.leafnodes, 2, "both sites joined");
    for (const s of ["a", "b"]) {
      const varz = await getJson(`${mesh.topology.site(s).httpUrl}/varz`);
      assert.equal(varz?.tls_required, true, `site ${s} requires TLS`);
      assert.equal(varz?.auth_required, true, `site ${s} requires a user`);
    }
    const tls = { caFile: mesh.certs?.ca ?? "" };
    const once = { maxReconnectAttempts: 0, timeout: 3000 };
    const a = mesh.sites.a?.url ?? "";
    // no CA (so no trust in the server), no user, a wrong password: all refused
    await assert.rejects(() => connect({ servers: a, user: "app", pass: users.app, ...once }));
    await assert.rejects(() => connect({ servers: a, tls, ...once }), /auth/i);
    await assert.rejects(
      () => connect({ servers: a, tls, user: "app", pass: wrongGuesses[0], ...once }),
      /auth/i,
    );
    // the hub relays every site's JetStream API: only admin gets in
    for (const [user, pass] of [
      ["app", users.app],
      ["reader", users.reader],
      ["syncd", users.syncd],
    ] as const)
      await assert.rejects(
        () => connect({ servers: mesh.hub.url, tls, user, pass, ...once }),
        /auth/i,
        `${user} at the hub`,
      );
    const admin = await mesh.connectHub();
    await admin.flush();
  });

  test("a server without the client certificate or the leaf password does not join the mesh", async () => {
    const dir = path.join(mesh.dir, "rogues");
    const hubLeafUrl = mesh.topology.hub.leafUrl;
    const certDir = mesh.certs?.dir ?? "";
    const variants: { name: string; conf: (c: string) => string; leafPw: string }[] = [
      { name: "wrong-password", conf: (c) => c, leafPw: wrongGuesses[1] as string },
      {
        name: "no-client-cert",
        conf: (c) => c.replace(/\n\s*cert_file: "[^"]*client\.pem"\n\s*key_file: "[^"]*client-key\.pem"/, ""),
        leafPw: leafPassword,
      },
    ];
    const servers: { name: string; http: string; log: string }[] = [];
    for (const v of variants) {
      const d = path.join(dir, v.name);
      mkdirSync(d, { recursive: true });
      const [client, http] = [await freePort(), await freePort()];
      const conf = v.conf(
        renderSecureSiteConf({
          site: `rogue_${v.name.replace(/-/g, "_")}`,
          host: "127.0.0.1",
          clientPort: client,
          httpPort: http,
          storeDir: path.join(d, "store"),
          hubLeafUrl,
          certDir,
          leafPassword: v.leafPw,
        }),
      );
      assert.equal(
        conf.includes("cert_file: ") && conf.includes(`${certDir}/client.pem`),
        v.name !== "no-client-cert",
        `${v.name}: client certificate in the remote`,
      );
      writeFileSync(path.join(d, "server.conf"), conf, { mode: 0o600 });
      writeFileSync(
        path.join(d, "users.conf"),
        renderSiteUsersConf({ site: "rogue", syncdPassword: "x", appPassword: "y", adminPassword: "z" }),
        { mode: 0o600 },
      );
      const log = path.join(d, "server.log");
      rogues.push(
        spawnLogged({
          cmd: findNatsServer(),
          args: ["-c", path.join(d, "server.conf")],
          cwd: d,
          logFile: log,
          marker: path.join(d, "server.conf"),
        }),
      );
      servers.push({ name: v.name, http: `http://127.0.0.1:${http}`, log });
    }
    // each has tried (and failed) at least twice (reconnect: 1 s)
    for (const s of servers)
      await waitFor(
        () => (readFileSync(s.log, "utf8").match(/Leafnode connection closed/g) ?? []).length >= 2,
        {
          timeout: 10000,
          message: `${s.name} refused twice; log:\n${readFileSync(s.log, "utf8").slice(-1500)}`,
        },
      );
    for (const s of servers) {
      const lz = await getJson(`${s.http}/leafz`);
      assert.equal(lz?.leafnodes, 0, `${s.name} has no leaf connection`);
    }
    assert.equal((await getJson(`${mesh.topology.hub.httpUrl}/leafz`))?.leafnodes, 2, "still only a and b");
    await Promise.all(rogues.splice(0).map((p) => stopProc(p)));
  });

  test("the mesh converges over the TLS leaf connections: app writes and deletes at a and b", async () => {
    const appA = await new Kvm(await mesh.connect("a", { user: "app", pass: users.app })).open("config");
    const appB = await new Kvm(await mesh.connect("b", { user: "app", pass: users.app })).open("config");
    await appA.put("sec.from-a", "va");
    await appB.put("sec.from-b", "vb");
    await appA.put("sec.gone", "soon");
    await eventually(async () => assert.equal((await appB.get("sec.gone"))?.string(), "soon"), {
      timeout: 15000,
      message: `a -> b\n${mesh.logs(undefined, 10)}`,
    });
    await appB.delete("sec.gone");
    await eventually(
      async () => {
        assert.equal((await appB.get("sec.from-a"))?.string(), "va");
        assert.equal((await appA.get("sec.from-b"))?.string(), "vb");
        assert.equal((await appA.get("sec.gone"))?.operation, "DEL");
      },
      { timeout: 15000, message: `both ways\n${mesh.logs(undefined, 10)}` },
    );
    // anti-entropy between the sites, asked for by app, finds nothing to move
    const app = await mesh.connect("a", { user: "app", pass: users.app });
    const { value } = await requestJson<ReconcilerRunResponse>(
      app,
      endpointSubject("a", "reconciler", "run"),
      { peers: ["b"] },
      { timeout: 30_000 },
    );
    const run = value.runs[0];
    assert.ok(run, JSON.stringify(value));
    assert.equal(run.error, undefined, JSON.stringify(run));
  });

  test("reader reads everything it should and writes nothing", async () => {
    const app = await new Kvm(await mesh.connect("a", { user: "app", pass: users.app })).open("config");
    await app.put("sec.read", "r1");
    const rd = await mesh.connect("a", { user: "reader", pass: users.reader });
    const kv = await new Kvm(rd).open("config");
    assert.equal((await kv.get("sec.read"))?.string(), "r1");
    const keys: string[] = [];
    for await (const k of await kv.keys()) keys.push(k);
    assert.ok(keys.includes("sec.read"), JSON.stringify(keys));
    const w = await kv.watch({ key: "sec.read" });
    for await (const e of w) {
      assert.equal(e.string(), "r1");
      break;
    }
    // discovery and the read-only endpoints, of its own site and of the others
    const found = await pingSite(rd, "a", 500);
    assert.deepEqual(found.map((f) => f.kind).sort(), [...SERVICE_KINDS].sort());
    for (const [site, svc, ep] of [
      ["a", "merger", "status"],
      ["b", "watcher", "status"],
      ["a", "reconciler", "status"],
      ["a", "clock", "now"],
    ] as const)
      await requestAnywhere(
        rd,
        endpointSubject(site, svc, ep),
        { data: new TextEncoder().encode("{}") },
        5000,
      );
    const got = await requestJson<{ value?: string }>(rd, endpointSubject("a", "merger", "get"), {
      bucket: "config",
      key: "sec.read",
    });
    assert.ok(JSON.stringify(got.value).includes("r1"), JSON.stringify(got.value));
    // no write of any kind
    await assert.rejects(() => kv.put("sec.read", "r2"), /permissions violation/i);
    assert.deepEqual(
      await notRefused(rd, [
        "$KV.config.sec.read",
        "$KV.config_meta.sec.read",
        "$KV.syncd_clock.hw",
        "rep.kv.ops",
        "rep.kv.ops.a",
        "syncd.a.journal",
        endpointSubject("a", "merger", "merge"),
        endpointSubject("a", "reconciler", "run"),
        endpointSubject("a", "clock", "tick"),
        "$JS.API.STREAM.PURGE.KV_config",
        "$JS.API.STREAM.DELETE.SYNCD_IN_a",
        `$JS.API.CONSUMER.DELETE.${durableIn}`,
        `$JS.API.CONSUMER.CREATE.${durableIn}`,
        `$JS.API.CONSUMER.MSG.NEXT.${durableKv}`,
        "$JS.API.CONSUMER.DURABLE.CREATE.KV_config.mine",
        "$JS.b.API.INFO",
      ]),
      [],
    );
    assert.equal((await kv.get("sec.read"))?.string(), "r1");
  });

  test("app may not forge ops, merge, touch _meta, the clock or the services' consumers", async () => {
    const app = await mesh.connect("a", { user: "app", pass: users.app });
    assert.deepEqual(
      await notRefused(app, [
        "rep.kv.ops.a",
        "rep.kv.ops.b",
        "syncd.a.journal",
        "syncd.b.journal",
        "syncd.a.dlq",
        "syncd.a.conflicts",
        endpointSubject("a", "merger", "merge"),
        endpointSubject("b", "merger", "merge"),
        endpointSubject("b", "reconciler", "run"),
        endpointSubject("a", "clock", "tick"),
        endpointSubject("a", "clock", "observe"),
        "$KV.config_meta.k",
        "$KV.syncd_clock.hw",
        `$JS.API.CONSUMER.DELETE.${durableIn}`,
        `$JS.API.CONSUMER.CREATE.${durableIn}`,
        `$JS.API.CONSUMER.CREATE.${durableIn}.rep.kv.ops`,
        `$JS.API.CONSUMER.DELETE.${durableKv}`,
        `$JS.API.CONSUMER.CREATE.${durableKv}`,
        `$JS.API.CONSUMER.MSG.NEXT.${durableIn}`,
        "$JS.API.CONSUMER.DURABLE.CREATE.SYNCD_IN_a.syncd-merger",
        "$JS.API.STREAM.DELETE.KV_config",
        "$JS.API.STREAM.UPDATE.SYNCD_IN_a",
        "$JS.b.API.STREAM.INFO.SYNCD_OUT_b",
      ]),
      [],
    );
    // the services' consumers are still there, and the mesh still replicates
    const jsm = await jetstreamManager(await mesh.connect("a"));
    await jsm.consumers.info(Streams.in("a"), Durables.merger);
    await jsm.consumers.info(kvStream("config"), Durables.watcher("a", "config"));
    const kvA = await new Kvm(app).open("config");
    await kvA.put("sec.after-app", "still");
    const kvB = await mesh.kv("b");
    await eventually(async () => assert.equal((await kvB.get("sec.after-app"))?.string(), "still"), {
      timeout: 15000,
    });
  });

  test("a site's syncd user may do nothing in the name of another site, nor destroy its own data", async () => {
    const syncd = await mesh.connect("a", { user: "syncd", pass: users.syncd });
    assert.deepEqual(
      await notRefused(syncd, [
        "rep.kv.ops.b",
        "rep.kv.ops.x",
        "syncd.b.journal",
        "syncd.b.dlq",
        "syncd.b.conflicts",
        endpointSubject("b", "clock", "tick"),
        endpointSubject("b", "merger", "get"),
        endpointSubject("b", "reconciler", "run"),
        "$JS.b.API.INFO",
        "$JS.b.API.STREAM.UPDATE.SYNCD_IN_b",
        "$JS.b.API.STREAM.INFO.SYNCD_OUT_b",
        "$JS.b.API.DIRECT.GET.KV_config",
        "$JS.b.API.CONSUMER.CREATE.SYNCD_OUT_b",
        "$JS.API.STREAM.DELETE.SYNCD_OUT_a",
        // purges: only the buckets' (tombstone collection), no op log, no clock
        `$JS.API.STREAM.PURGE.${Streams.out("a")}`,
        `$JS.API.STREAM.PURGE.${Streams.in("a")}`,
        "$JS.API.STREAM.PURGE.KV_syncd_clock",
        "$JS.API.STREAM.MSG.DELETE.KV_config_meta",
        // the members bucket at the hub: only its own record and domain claim
        "$JS.hub.API.$KV.syncd_members.sites.b",
        "$JS.hub.API.$KV.syncd_members.domains.b",
        "$JS.hub.API.STREAM.PURGE.KV_syncd_members",
        "$JS.API.ACCOUNT.PURGE.$G",
      ]),
      [],
    );
    // the check above tells refused from allowed: its own (harmless) subjects go through
    assert.deepEqual(await notRefused(syncd, ["syncd.a.nothing"], 300), ["syncd.a.nothing"]);
    // What it needs of the peers (digest, entries, merge) is allowed: the anti-entropy run in the
    // convergence test above and test/I7-deploy-auth.test.ts use it.
  });

  test("no password appears in any server or service log (also after reconnects and refused logins)", async () => {
    // a site server restart: every service of the site logs its disconnect and reconnect
    await mesh.stopServer("a");
    await mesh.startServer("a");
    const kvA = await mesh.kv("a");
    await kvA.put("sec.after-restart", "x");
    await eventually(
      async () => assert.equal((await (await mesh.kv("b")).get("sec.after-restart"))?.string(), "x"),
      // a give-up, not a property: the site's services re-arm the sources that failed while its
      // server was down (README "What happens when…")
      { timeout: 45_000 },
    );
    // a service started with a wrong password: refused, and says so without the password
    const bad = spawnSync(
      process.execPath,
      [
        "--import",
        "tsx",
        "services/clock/main.ts",
        "--site",
        "a",
        "--nats-url",
        mesh.sites.a?.url ?? "",
        "--user",
        "syncd",
        "--password",
        wrongGuesses[0] as string,
        "--tls-ca",
        mesh.certs?.ca ?? "",
      ],
      {
        cwd: REPO_ROOT,
        encoding: "utf8",
        timeout: 20000,
        env: { ...process.env, NODE_TEST_CONTEXT: undefined },
      },
    );
    const badLog = path.join(mesh.dir, "site-a", "clock-wrong-password.log");
    writeFileSync(badLog, `${bad.stdout}${bad.stderr}`);
    assert.notEqual(bad.status, 0, "a service with a wrong password does not run");
    assert.match(`${bad.stdout}${bad.stderr}`, /authorization/i);

    const files = logFiles(mesh.dir);
    assert.ok(files.length >= 11, `hub, 2 sites, 8 services, ...: ${files.join(", ")}`);
    const secrets = {
      ...users,
      leaf: leafPassword,
      wrong: wrongGuesses[0] as string,
      wrongLeaf: wrongGuesses[1] as string,
    };
    assert.deepEqual(leaks(mesh.dir, secrets), []);
    // the grep does find them where they must be: the configs, readable by their owner only
    for (const f of [
      path.join(mesh.dir, "hub", "hub.conf"),
      path.join(mesh.dir, "site-a", "server.conf"),
      path.join(mesh.dir, "site-a", "users.conf"),
    ]) {
      assert.equal(statSync(f).mode & 0o077, 0, `${f} is not readable by others`);
    }
    assert.ok(readFileSync(path.join(mesh.dir, "site-a", "users.conf"), "utf8").includes(users.reader));
    assert.ok(readFileSync(path.join(mesh.dir, "site-a", "server.conf"), "utf8").includes(leafPassword));
  });

  test("an app's write carrying forged syncd version headers still replicates", async () => {
    const app = await mesh.connect("a", { user: "app", pass: users.app });
    const h = natsHeaders();
    h.set(Headers.ts, String(Date.now() * 1000));
    h.set(Headers.node, "site-zzz");
    await jetstream(app).publish(kvSubject("config", "sec.forged-headers"), "local only?", { headers: h });
    const kvB = await mesh.kv("b");
    await eventually(
      async () => assert.equal((await kvB.get("sec.forged-headers"))?.string(), "local only?"),
      // a give-up, not a property: it follows a's server restart above, and CI (2 cores) once
      // needed more than 4 s there
      { timeout: 15000 },
    );
  });

  test("a password given in the NATS URL (nats://user:pass@host) is not logged", async () => {
    const url = (mesh.sites.a?.url ?? "").replace("nats://", `nats://syncd:${users.syncd}@`);
    const out = await new Promise<string>((resolve) => {
      const p = spawn(
        process.execPath,
        [
          "--import",
          "tsx",
          "services/clock/main.ts",
          "--site",
          "a",
          "--nats-url",
          url,
          "--tls-ca",
          mesh.certs?.ca ?? "",
        ],
        {
          cwd: REPO_ROOT,
          env: { ...process.env, NODE_TEST_CONTEXT: undefined, SYNCD_INSTANCE: "url-creds" },
        },
      );
      let text = "";
      const onData = (d: Buffer) => {
        text += d.toString();
        if (text.includes('"ready"')) p.kill("SIGTERM");
      };
      p.stdout.on("data", onData);
      p.stderr.on("data", onData);
      const timer = setTimeout(() => p.kill("SIGKILL"), 15000);
      p.once("exit", () => {
        clearTimeout(timer);
        resolve(text);
      });
    });
    assert.match(out, /starting/);
    assert.equal(out.includes(users.syncd), false, "the URL's password is in the service's log");
  });
});

describe("SECURE=1 ./scripts/up.sh", () => {
  const mesh = withUpMesh("up-secure", { SECURE: "1" });
  const dir = mesh.dir;

  test("per-site passwords and TLS; app at a → reader at b; down.sh removes the secrets", async () => {
    const up = mesh.run("up.sh");
    assert.equal(up.code, 0, up.out);
    assert.match(up.out, /SECURE/);
    const state = JSON.parse(readFileSync(path.join(dir, "mesh.json"), "utf8")) as {
      sites: Record<string, { url: string }>;
      secure?: { certs: string; secrets: string };
    };
    assert.ok(state.secure, "mesh.json records the secured mesh");
    assert.equal(JSON.stringify(state).includes("password"), false);
    const secret = (...p: string[]) =>
      readFileSync(path.join(state.secure?.secrets ?? "", ...p), "utf8").trim();
    const all: Record<string, string> = { admin: secret("admin"), leaf: secret("leaf") };
    for (const s of ["a", "b"])
      for (const u of ["syncd", "app", "reader"]) {
        all[`${s}/${u}`] = secret(s, u);
        assert.equal(statSync(path.join(state.secure?.secrets ?? "", s, u)).mode & 0o077, 0);
      }
    assert.equal(new Set(Object.values(all)).size, Object.keys(all).length, "every password differs");
    assert.equal(JSON.stringify(state).includes(all.admin as string), false, "no password in mesh.json");
    assert.equal(up.out.includes(all["a/app"] as string), false, "up.sh prints no password");

    const tls = { caFile: path.join(state.secure?.certs ?? "", "ca.pem") };
    const a = state.sites.a?.url ?? "";
    const b = state.sites.b?.url ?? "";
    const app = await connect({ servers: a, user: "app", pass: all["a/app"], tls });
    const reader = await connect({ servers: b, user: "reader", pass: all["b/reader"], tls });
    try {
      await (await new Kvm(app).open("config")).put("up.secure", "yes");
      const kvB = await new Kvm(reader).open("config");
      await eventually(async () => assert.equal((await kvB.get("up.secure"))?.string(), "yes"), {
        timeout: 15000,
      });
      // a site's syncd password does not open another site
      await assert.rejects(
        () => connect({ servers: b, user: "syncd", pass: all["a/syncd"], tls, maxReconnectAttempts: 0 }),
        /auth/i,
      );
    } finally {
      await app.close();
      await reader.close();
    }
    assert.deepEqual(leaks(dir, all), []);

    const down = mesh.run("down.sh");
    assert.equal(down.code, 0, down.out);
    assert.throws(() => statSync(path.join(dir, "secrets")), /ENOENT/);
    assert.throws(() => statSync(path.join(dir, "site-a", "users.conf")), /ENOENT/);
    assert.deepEqual(leaks(dir, all), [], "logs kept by down.sh hold no password");
  });
});
