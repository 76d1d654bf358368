/**
 * One connection-options module for the CLI and the services (services/lib/connect.ts): natscli's
 * flag and environment spellings, the older syncd ones, natscli context files (made by the real
 * `nats context add` when it is installed), and `syncd <command> --help`.
 */
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { connect } from "@nats-io/transport-node";
import { freePort, sleep } from "../scripts/lib/proc.ts";
import { ConfigError, connectNats, loadConfig, parseCli, run } from "../services/mod.ts";

const NATS_CLI = process.env.NATS_CLI ?? "/root/go/bin/nats";
const NATS_SERVER = process.env.NATS_SERVER ?? "nats-server";

/** What both readers make of the same argv/env: the CLI's conn and the services' config. */
function both(argv: string[], env: NodeJS.ProcessEnv) {
  const cli = parseCli(["status", ...argv], env).conn;
  const cfg = loadConfig(["--site", "a", ...argv], env);
  const { timeoutMs: _t, ...c } = cli;
  const { nkeySeedFile, ...auth } = cfg.auth;
  return { cli: c, svc: { servers: cfg.natsUrl, ...auth, ...(nkeySeedFile ? { nkey: nkeySeedFile } : {}) } };
}

/** A config home with natscli contexts, made by the real CLI when there is one. */
function makeContexts(
  dir: string,
  contexts: Record<string, { server: string; token?: string; creds?: string }>,
  select?: string,
) {
  const env = { ...process.env, HOME: dir, XDG_CONFIG_HOME: join(dir, ".config") };
  for (const [name, c] of Object.entries(contexts)) {
    if (existsSync(NATS_CLI)) {
      const args = ["context", "add", name, "--server", c.server];
      // natscli 0.5 keeps no --token in a context: its --user is "Username or Token"
      if (c.token) args.push("--user", c.token);
      if (c.creds) args.push("--creds", c.creds);
      if (select === name) args.push("--select");
      execFileSync(NATS_CLI, args, { env, stdio: "pipe" });
    } else {
      const d = join(dir, ".config", "nats", "context");
      mkdirSync(d, { recursive: true });
      writeFileSync(
        join(d, `${name}.json`),
        JSON.stringify({
          url: c.server,
          token: c.token ?? "",
          creds: c.creds ?? "",
          nkey: "",
          cert: "",
          key: "",
          ca: "",
          nsc: "",
        }),
      );
      if (select === name) writeFileSync(join(dir, ".config", "nats", "context.txt"), name);
    }
  }
  assert.ok(
    existsSync(join(dir, ".config", "nats", "context", `${Object.keys(contexts)[0]}.json`)),
    "context written under XDG_CONFIG_HOME",
  );
  return { HOME: dir, XDG_CONFIG_HOME: join(dir, ".config") };
}

describe("connection options: one module, natscli spellings", () => {
  const dir = mkdtempSync(join(tmpdir(), "syncd-conn-"));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("natscli flags and env, and the older spellings, give the CLI and the services the same settings", () => {
    const natscli = both(
      [
        "-s",
        "nats://h1:4222,nats://h2:4222",
        "--user",
        "u",
        "--password",
        "p",
        "--token",
        "t",
        "--creds",
        "/c",
        "--nkey",
        "/n",
        "--tlscert",
        "/cert",
        "--tlskey",
        "/key",
        "--tlsca",
        "/ca",
      ],
      {},
    );
    const expected = {
      servers: ["nats://h1:4222", "nats://h2:4222"],
      user: "u",
      password: "p",
      token: "t",
      creds: "/c",
      nkey: "/n",
      tlsCert: "/cert",
      tlsKey: "/key",
      tlsCa: "/ca",
    };
    assert.deepEqual(natscli.cli, expected);
    assert.deepEqual(natscli.svc, expected);
    const env = both([], {
      NATS_URL: "nats://h1:4222,nats://h2:4222",
      NATS_USER: "u",
      NATS_PASSWORD: "p",
      NATS_TOKEN: "t",
      NATS_CREDS: "/c",
      NATS_NKEY: "/n",
      NATS_CERT: "/cert",
      NATS_KEY: "/key",
      NATS_CA: "/ca",
    });
    assert.deepEqual(env.cli, expected);
    assert.deepEqual(env.svc, expected);
    const old = both(
      [
        "--nats-url",
        "nats://h1:4222,nats://h2:4222",
        "--tls-cert",
        "/cert",
        "--tls-key",
        "/key",
        "--tls-ca",
        "/ca",
      ],
      { NATS_USER: "u", NATS_PASSWORD: "p", NATS_TOKEN: "t", NATS_CREDS: "/c", NATS_NKEY: "/n" },
    );
    assert.deepEqual(old.cli, expected);
    assert.deepEqual(old.svc, expected);
    const oldEnv = both([], { NATS_TLS_CA: "/ca", NATS_TLS_CERT: "/cert", NATS_TLS_KEY: "/key" });
    assert.deepEqual(oldEnv.svc, {
      servers: ["nats://127.0.0.1:4222"],
      tlsCa: "/ca",
      tlsCert: "/cert",
      tlsKey: "/key",
    });
    assert.deepEqual(oldEnv.cli, oldEnv.svc);
    // a flag wins over the environment, natscli's env over the older one
    assert.deepEqual(both(["--tlsca", "/flag"], { NATS_CA: "/env", NATS_TLS_CA: "/old" }).svc.tlsCa, "/flag");
    assert.deepEqual(both([], { NATS_CA: "/env", NATS_TLS_CA: "/old" }).cli.tlsCa, "/env");
  });

  it("contexts: --context/NATS_CONTEXT for both; the selected context for the CLI only; flags and env win", () => {
    const home = makeContexts(
      dir,
      {
        prod: { server: "nats://ctx-a:4222,nats://ctx-b:4222", token: "ctx-token" },
        other: { server: "nats://other:4222" },
      },
      "other",
    );
    const named = both(["--context", "prod"], home);
    assert.deepEqual(named.cli, { servers: ["nats://ctx-a:4222", "nats://ctx-b:4222"], token: "ctx-token" });
    assert.deepEqual(named.svc, named.cli);
    assert.deepEqual(both([], { ...home, NATS_CONTEXT: "prod" }).svc, named.cli);
    assert.deepEqual(
      both(["-s", "nats://flag:1"], { ...home, NATS_CONTEXT: "prod", NATS_TOKEN: "env" }).cli,
      {
        servers: ["nats://flag:1"],
        token: "env",
      },
    );
    // the selected context (nats context select): the CLI uses it, unless --no-context; services never
    assert.deepEqual(parseCli(["status"], home).conn.servers, ["nats://other:4222"]);
    assert.deepEqual(parseCli(["status", "--no-context"], home).conn.servers, ["nats://127.0.0.1:4222"]);
    assert.deepEqual(loadConfig(["--site", "a"], home).natsUrl, ["nats://127.0.0.1:4222"]);
    assert.throws(() => loadConfig(["--site", "a", "--context", "nope"], home), ConfigError);
    assert.throws(() => parseCli(["status", "--context", "../x"], home), /bad context name/);
  });

  it("syncd <command> --help describes that command; syncd --help everything", async () => {
    const out: string[] = [];
    const io = { out: (s: string) => out.push(s), err: (s: string) => out.push(s) };
    assert.equal(await run(["conflicts", "--help"], io, {}), 0);
    assert.match(out[0]!, /^usage: syncd \[flags\] conflicts <bucket> \[key\]/);
    assert.match(out[0]!, /--limit n shows the newest n/);
    assert.doesNotMatch(out[0]!, /^commands:/m);
    out.length = 0;
    assert.equal(await run(["--help"], io, {}), 0);
    assert.match(out[0]!, /^commands:/m);
    assert.match(out[0]!, /--tlsca, --tls-ca .*\[\$NATS_CA\] \[\$NATS_TLS_CA\]/);
  });

  describe("on a real server with token auth", () => {
    let server: ChildProcess;
    let url: string;
    before(async () => {
      const port = await freePort();
      url = `nats://127.0.0.1:${port}`;
      server = spawn(NATS_SERVER, ["-a", "127.0.0.1", "-p", String(port), "--auth", "s3cret"], {
        stdio: "ignore",
      });
      for (let i = 0; ; i++) {
        try {
          await (await connect({ servers: url, token: "s3cret" })).close();
          break;
        } catch (err) {
          if (i > 100) throw err;
          await sleep(100);
        }
      }
    });
    after(() => server?.kill());

    it("the CLI connects with --token, NATS_TOKEN and a context; without it, exit 1", async () => {
      const home = makeContexts(join(dir, "tok"), { tok: { server: url, token: "s3cret" } }, "tok");
      const io = { out: () => {}, err: (s: string) => errs.push(s) };
      const errs: string[] = [];
      // micro ls on a server without services: connects and lists nothing
      assert.equal(
        await run(["micro", "ls", "-s", url, "--token", "s3cret", "--no-context"], io, {}),
        0,
        errs.join(),
      );
      assert.equal(
        await run(["micro", "ls", "--no-context"], io, { NATS_URL: url, NATS_TOKEN: "s3cret" }),
        0,
        errs.join(),
      );
      assert.equal(await run(["micro", "ls"], io, home), 0, errs.join());
      assert.equal(
        await run(["micro", "ls", "--context", "tok"], io, {
          ...home,
          HOME: "/nonexistent",
          XDG_CONFIG_HOME: home.XDG_CONFIG_HOME,
        }),
        0,
      );
      errs.length = 0;
      assert.equal(await run(["micro", "ls", "-s", url, "--no-context"], io, {}), 1);
      assert.match(errs.join(), /authorization/i);
    });

    it("X: a service connection builds no Error for a request that got its reply; timeouts and no responders still reject", async () => {
      // nats.js resolves a request, then cancels it, which builds RequestError("cancelled") for a settled
      // promise (10-13 % of the merger's CPU); connectNats stops that (services/lib/request.ts)
      const errorsJs = join(
        dirname(createRequire(import.meta.url).resolve("@nats-io/nats-core")),
        "errors.js",
      );
      const errorsMod = createRequire(import.meta.url)(errorsJs) as {
        RequestError: new (m?: string, o?: ErrorOptions) => Error;
      };
      const Original = errorsMod.RequestError;
      let built = 0;
      errorsMod.RequestError = class extends Original {
        constructor(m?: string, o?: ErrorOptions) {
          super(m, o);
          built++;
        }
      };
      const nc = await connectNats({ natsUrl: [url], auth: { token: "s3cret" } }, "x-conn-options");
      try {
        const sub = nc.subscribe("x.echo", { callback: (_e, m) => void m.respond(m.data) });
        const replies = await Promise.all(Array.from({ length: 50 }, () => nc.request("x.echo", "hi")));
        assert.ok(replies.every((m) => m.string() === "hi"));
        assert.equal(built, 0, "RequestError built for requests that got their reply");
        await assert.rejects(
          nc.request("x.nobody", "hi", { timeout: 2000 }),
          (e: Error) => e instanceof Error,
        );
        const silent = nc.subscribe("x.silent", { callback: () => {} });
        await assert.rejects(nc.request("x.silent", "hi", { timeout: 200 }), /timeout/i);
        sub.unsubscribe();
        silent.unsubscribe();
      } finally {
        errorsMod.RequestError = Original;
        await nc.close();
      }
    });
  });
});
