/**
 * Auth as operators run it, on real servers: decentralized JWT auth (an operator, its accounts and
 * users, made here with @nats-io/nkeys and @nats-io/jwt; memory resolver), sites whose leaf remotes
 * log in to the hub with a `credentials` file, the syncd services in an account of their own (SYNCD)
 * and the applications in another (APP) that reaches the replicated bucket only through the imports
 * SYNCD exports; and plain nkey users (`--nkey` seed file).
 */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { encodeAccount, encodeOperator, encodeUser, fmtCreds } from "@nats-io/jwt";
import { Kvm } from "@nats-io/kv";
import { type NatsConnection, credsAuthenticator, nkeyAuthenticator } from "@nats-io/nats-core";
import { createAccount, createOperator, createUser } from "@nats-io/nkeys";
import { connect } from "@nats-io/transport-node";
import { type Proc, freePort, sleep, spawnLogged, stopProc, tail } from "../scripts/lib/proc.ts";
import { run } from "../services/mod.ts";
import { waitFor } from "./harness/mesh.ts";

const REPO = join(fileURLToPath(import.meta.url), "..", "..");
const NATS_SERVER = process.env.NATS_SERVER ?? "nats-server";
const KINDS = ["clock", "watcher", "merger", "reconciler"] as const;
const enc = new TextEncoder();

async function readyz(port: number): Promise<boolean> {
  return (await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined))?.status === 200;
}

/** Connect, retrying while the server starts. */
async function connectRetry(opts: Parameters<typeof connect>[0]): Promise<NatsConnection> {
  for (let i = 0; ; i++) {
    try {
      return await connect(opts);
    } catch (err) {
      if (i > 100) throw err;
      await sleep(100);
    }
  }
}

describe("I7 security, operator mode: JWT accounts, leaf remotes with credentials, services and apps in accounts of their own", () => {
  const dir = mkdtempSync(join(tmpdir(), "syncd-jwt-"));
  const procs: Proc[] = [];
  const conns: NatsConnection[] = [];
  const url: Record<string, string> = {};
  const creds: Record<string, string> = {};
  const http: Record<string, number> = {};

  const start = (name: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env) => {
    const p = spawnLogged({
      cmd,
      args,
      cwd: REPO,
      env,
      logFile: join(dir, "logs", `${name}.log`),
      marker: name,
    });
    procs.push(p);
    return p;
  };

  before(async () => {
    const op = createOperator();
    const sys = createAccount();
    const syncd = createAccount();
    const app = createAccount();
    const opJwt = await encodeOperator("OP", op, { system_account: sys.getPublicKey() });
    // limits left out of an account JWT are 0 (no exports, no imports, no wildcards): say them all
    const open = {
      imports: -1,
      exports: -1,
      wildcards: true,
      conn: -1,
      leaf: -1,
      subs: -1,
      data: -1,
      payload: -1,
    };
    const unlimitedJs = { ...open, disk_storage: -1, mem_storage: -1, streams: -1, consumer: -1 };
    const sysJwt = await encodeAccount("SYS", sys, {}, { signer: op });
    // what an app may do with the replicated bucket: write keys, read them, look at the bucket (and
    // $JS.API.INFO, which nats.js asks before a get on nats-server 2.9)
    const shared = [
      "$KV.config.>",
      "$JS.API.DIRECT.GET.KV_config",
      "$JS.API.DIRECT.GET.KV_config.>",
      "$JS.API.STREAM.MSG.GET.KV_config",
      "$JS.API.STREAM.INFO.KV_config",
      "$JS.API.INFO",
    ];
    const syncdJwt = await encodeAccount(
      "SYNCD",
      syncd,
      {
        limits: unlimitedJs,
        exports: shared.map((subject) => ({ name: subject, subject, type: "service" as const })),
      },
      { signer: op },
    );
    const appJwt = await encodeAccount(
      "APP",
      app,
      {
        limits: open,
        imports: shared.map((subject) => ({
          name: subject,
          subject,
          account: syncd.getPublicKey(),
          type: "service" as const,
        })),
      },
      { signer: op },
    );
    mkdirSync(join(dir, "creds"));
    const userCreds = async (name: string, account: ReturnType<typeof createAccount>) => {
      const u = createUser();
      const jwt = await encodeUser(name, u, account);
      const file = join(dir, "creds", `${name}.creds`);
      writeFileSync(file, fmtCreds(jwt, u));
      creds[name] = file;
    };
    await userCreds("syncd", syncd);
    await userCreds("leaf", syncd);
    await userCreds("app", app);

    const trust = [
      `operator: "${opJwt}"`,
      `system_account: ${sys.getPublicKey()}`,
      "resolver: MEMORY",
      "resolver_preload: {",
      `  ${sys.getPublicKey()}: "${sysJwt}"`,
      `  ${syncd.getPublicKey()}: "${syncdJwt}"`,
      `  ${app.getPublicKey()}: "${appJwt}"`,
      "}",
    ].join("\n");
    const hubPort = await freePort();
    const leafPort = await freePort();
    writeFileSync(
      join(dir, "hub.conf"),
      // the hub runs JetStream in domain hub (SYNCD_HUB, syncd_members); SYNCD's JWT enables it there
      `server_name: hub\nlisten: 127.0.0.1:${hubPort}\n${trust}\njetstream { domain: hub, store_dir: "${join(dir, "js-hub")}" }\nleafnodes { listen: 127.0.0.1:${leafPort} }\n`,
    );
    start("hub", NATS_SERVER, ["-c", join(dir, "hub.conf")]);
    for (const site of ["a", "b"]) {
      const port = await freePort();
      url[site] = `nats://127.0.0.1:${port}`;
      writeFileSync(
        join(dir, `site-${site}.conf`),
        `server_name: site-${site}
listen: 127.0.0.1:${port}
${trust}
jetstream { domain: ${site}, store_dir: "${join(dir, `js-${site}`)}" }
leafnodes {
  remotes [
    {
      url: "nats-leaf://127.0.0.1:${leafPort}"
      credentials: "${creds.leaf}"
      account: ${syncd.getPublicKey()}
      deny_exports: ["rep.kv.ops"]
      deny_imports: ["rep.kv.ops"]
    }
  ]
}
`,
      );
      start(`site-${site}`, NATS_SERVER, ["-c", join(dir, `site-${site}.conf`)]);
    }
    for (const site of ["a", "b"]) {
      const nc = await connectRetry({
        servers: url[site],
        authenticator: credsAuthenticator(enc.encode(await readCreds(creds.syncd!))),
      });
      conns.push(nc);
      const kvm = new Kvm(nc);
      await kvm.create("config", { history: 1 });
    }
    for (const site of ["a", "b"])
      for (const kind of KINDS) {
        const port = await freePort();
        http[`${site}-${kind}`] = port;
        start(
          `${site}-${kind}`,
          process.execPath,
          [
            "services/run.mjs",
            kind,
            "--site",
            site,
            "--reconcile-interval",
            "0",
            "--http-port",
            String(port),
            "--http-host",
            "127.0.0.1",
          ],
          // natscli's environment spellings: the services log in with the SYNCD user's credentials
          {
            ...process.env,
            NATS_URL: url[site],
            NATS_CREDS: creds.syncd,
          },
        );
      }
    for (const [name, port] of Object.entries(http)) {
      try {
        await waitFor(() => readyz(port), { timeout: 60_000, message: `${name} ready` });
      } catch (err) {
        throw new Error(`${(err as Error).message}\n${tail(join(dir, "logs", `${name}.log`), 30)}`);
      }
    }
  });
  after(async () => {
    for (const nc of conns) await nc.close().catch(() => {});
    await Promise.all(procs.reverse().map((p) => stopProc(p)));
    if (process.env.KEEP_MESH !== "1") rmSync(dir, { recursive: true, force: true });
  });

  it("an app in account APP writes at a through SYNCD's exports; the services replicate it; an app at b reads it", async () => {
    const appConn = async (site: string) => {
      const nc = await connectRetry({
        servers: url[site],
        authenticator: credsAuthenticator(enc.encode(await readCreds(creds.app!))),
      });
      conns.push(nc);
      return nc;
    };
    const [ncA, ncB] = [await appConn("a"), await appConn("b")];
    const kvA = await new Kvm(jetstream(ncA, { checkAPI: false })).open("config");
    await kvA.put("jwt.k", "from-app-a");
    const syncdB = await new Kvm(conns[1]!).open("config");
    await waitFor(async () => (await syncdB.get("jwt.k"))?.string() === "from-app-a", {
      timeout: 30_000,
      message: "the app's write at a replicated to b",
    });
    const kvB = await new Kvm(jetstream(ncB, { checkAPI: false })).open("config");
    await waitFor(async () => (await kvB.get("jwt.k"))?.string() === "from-app-a", {
      timeout: 30_000,
      message: "the app's write at a readable at b",
    });
    // the app's account sees nothing else of SYNCD: no stream admin, no syncd endpoints, no ops
    const jsm = await jetstreamManager(ncA, { checkAPI: false });
    await assert.rejects(jsm.streams.delete("KV_config"));
    await assert.rejects(ncA.request("$SRV.PING.syncd-merger", undefined, { timeout: 1000 }));
    await assert.rejects(ncA.request("syncd.a.merger.status", undefined, { timeout: 1000 }));
  });

  it("the syncd CLI logs in with --creds and with a natscli context naming the credentials", async () => {
    const out: string[] = [];
    const io = { out: (s: string) => out.push(s), err: (s: string) => out.push(s) };
    const code = await run(
      ["micro", "ls", "--json", "-s", url.a!, "--creds", creds.syncd!, "--no-context"],
      io,
      {},
    );
    assert.equal(code, 0, out.join("\n"));
    const instances = JSON.parse(out[0]!) as { metadata?: { site?: string } }[];
    assert.equal(instances.length, 8, "4 services at each of the 2 sites, seen from a");
    const home = join(dir, "home");
    mkdirSync(join(home, ".config", "nats", "context"), { recursive: true });
    writeFileSync(
      join(home, ".config", "nats", "context", "syncd-b.json"),
      JSON.stringify({ url: url.b, creds: creds.syncd }),
    );
    out.length = 0;
    assert.equal(
      await run(["micro", "ls", "--json"], io, { HOME: home, NATS_CONTEXT: "syncd-b" }),
      0,
      out.join("\n"),
    );
    assert.equal((JSON.parse(out[0]!) as unknown[]).length, 8);
    // the APP user sees no syncd service at all
    out.length = 0;
    assert.equal(
      await run(["micro", "ls", "--json", "-s", url.a!, "--creds", creds.app!, "--no-context"], io, {}),
      0,
    );
    assert.deepEqual(JSON.parse(out[0]!), []);
  });
});

async function readCreds(file: string): Promise<string> {
  const { readFile } = await import("node:fs/promises");
  return readFile(file, "utf8");
}

describe("nkey users (no JWT): services log in with --nkey", () => {
  const dir = mkdtempSync(join(tmpdir(), "syncd-nkey-"));
  let server: Proc;
  let svc: Proc;
  after(async () => {
    if (svc) await stopProc(svc);
    if (server) await stopProc(server);
    rmSync(dir, { recursive: true, force: true });
  });

  it("syncd-clock with --nkey <seed file> gets ready; a wrong seed is refused", async () => {
    const user = createUser();
    const seedFile = join(dir, "syncd.nk");
    writeFileSync(seedFile, new TextDecoder().decode(user.getSeed()));
    const port = await freePort();
    writeFileSync(
      join(dir, "site.conf"),
      `listen: 127.0.0.1:${port}\njetstream { domain: a, store_dir: "${join(dir, "js")}" }\nauthorization { users: [ { nkey: ${user.getPublicKey()} } ] }\n`,
    );
    server = spawnLogged({
      cmd: NATS_SERVER,
      args: ["-c", join(dir, "site.conf")],
      logFile: join(dir, "server.log"),
      marker: "nkey",
    });
    const nc = await connectRetry({
      servers: `nats://127.0.0.1:${port}`,
      authenticator: nkeyAuthenticator(user.getSeed()),
    });
    await nc.close();
    const httpPort = await freePort();
    svc = spawnLogged({
      cmd: process.execPath,
      args: [
        "services/run.mjs",
        "clock",
        "--site",
        "a",
        "-s",
        `nats://127.0.0.1:${port}`,
        "--nkey",
        seedFile,
        "--http-port",
        String(httpPort),
        "--http-host",
        "127.0.0.1",
      ],
      cwd: REPO,
      env: { ...process.env },
      logFile: join(dir, "clock.log"),
      marker: "clock",
    });
    try {
      await waitFor(() => readyz(httpPort), { timeout: 60_000, message: "clock ready" });
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${tail(join(dir, "clock.log"), 30)}`);
    }
    const other = join(dir, "other.nk");
    writeFileSync(other, new TextDecoder().decode(createUser().getSeed()));
    const out: string[] = [];
    const io = { out: (s: string) => out.push(s), err: (s: string) => out.push(s) };
    assert.equal(
      await run(["micro", "ls", "-s", `nats://127.0.0.1:${port}`, "--nkey", other, "--no-context"], io, {}),
      1,
    );
    assert.match(out.join("\n"), /authorization/i);
    out.length = 0;
    assert.equal(
      await run(["micro", "ls", "--json", "--no-context"], io, {
        NATS_URL: `nats://127.0.0.1:${port}`,
        NATS_NKEY: seedFile,
      }),
      0,
      out.join("\n"),
    );
    assert.equal((JSON.parse(out[0]!) as unknown[]).length, 1);
  });
});
