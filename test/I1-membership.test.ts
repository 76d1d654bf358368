/**
 * I1 extended (#11.4): mesh membership through the hub's members bucket. A site joins with nothing
 * done at the others; a second site with the same name or the same JetStream domain is refused
 * loudly and the first keeps working, raising DUPLICATE_SITE (error) with the other server's identity
 * until its attempt record is deleted; `syncd site remove` takes a stopped site out (member record,
 * domain claim, refused attempts, hub source) and the others forget it as a peer.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { type JetStreamManager, type StreamConfig, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import {
  Conditions,
  MEMBERS_BUCKET,
  type ReconcilerStatusResponse,
  Streams,
  run as cli,
  createLogger,
  domainKey,
  ensureHubRegistration,
  loadConfig,
  memberKey,
  rearmSource,
  refusedKey,
  sourcesBackOff,
  versionOfStreamConfig,
} from "../services/mod.ts";
import { call, until, withLinkedMesh } from "./helpers.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

describe("I1 membership: join, refuse duplicates, remove", () => {
  const { mesh, nc } = withLinkedMesh({ serviceArgs: ["--reconcile-interval", "0"] });
  let hub: NatsConnection;
  let members: KV;
  const spawned: ChildProcess[] = [];

  before(async () => {
    hub = await mesh.connectHub();
    members = await until(async () => {
      try {
        const kv = await new Kvm(jetstream(hub, { domain: "hub" })).open(MEMBERS_BUCKET);
        await kv.status();
        return kv;
      } catch {
        return null;
      }
    });
  });
  after(() => {
    for (const p of spawned) p.kill("SIGKILL");
  });

  const status = (n: NatsConnection, site: string) =>
    call<ReconcilerStatusResponse>(n, site, "reconciler", "status");
  const record = async (key: string) => {
    const e = await members.get(key);
    return e?.operation === "PUT" ? (e.json() as { site: string; domain: string; identity: string }) : null;
  };

  /**
   * A lone reconciler at some server with other flags; resolves with its output once `marker` shows
   * and the process has exited (with its exit code).
   */
  const impostor = async (
    url: string,
    args: string[],
    marker: RegExp,
    kind = "reconciler",
  ): Promise<{ out: string; code: number | null }> => {
    const p = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        `services/${kind}/main.ts`,
        "--nats-url",
        url,
        "--reconcile-interval",
        "0",
        ...args,
      ],
      { cwd: ROOT, env: { ...process.env, LOG_LEVEL: "info", NODE_TEST_CONTEXT: "" }, stdio: "pipe" },
    );
    spawned.push(p);
    let out = "";
    p.stdout?.on("data", (d) => {
      out += String(d);
    });
    p.stderr?.on("data", (d) => {
      out += String(d);
    });
    try {
      await until(() => marker.test(out), { timeout: 60_000, message: `no ${marker} in:\n${out}` });
      if (kind === "reconciler")
        await until(() => p.exitCode !== null, {
          timeout: 20_000,
          message: "the refused reconciler kept running",
        });
    } finally {
      p.kill("SIGKILL");
    }
    return { out, code: p.exitCode };
  };

  it("every site registers itself: record with identity and domain claim; peers come from the bucket", async () => {
    const st = await until(async () => {
      const s = await status(nc.a!, "a");
      return s.membership?.state === "member" && s.peers.includes("b") ? s : null;
    });
    const ra = await record(memberKey("a"));
    assert.equal(ra?.domain, "a");
    assert.equal(ra?.identity, st.membership?.identity);
    assert.equal((await record(domainKey("a")))?.identity, ra?.identity);
    assert.ok(await record(memberKey("b")));
  });

  it("a new site joins with nothing done at the others", async () => {
    await mesh.addSite("c");
    nc.c = await mesh.connect("c");
    await until(async () => (await status(nc.a!, "a")).peers.includes("c"), { message: "a never saw c" });
    await until(async () => (await status(nc.b!, "b")).peers.includes("c"), { message: "b never saw c" });
    const sc = await until(async () => {
      const s = await status(nc.c!, "c");
      return s.membership?.state === "member" && s.peers.length === 2 ? s : null;
    });
    assert.deepEqual(sc.peers, ["a", "b"]);
  });

  /** The DUPLICATE_SITE condition of a site's reconciler about `identity`, once it shows. */
  const duplicate = (site: string, identity: string) =>
    until(
      async () => {
        const s = await status(nc[site]!, site);
        const c = s.conditions?.find((x) => x.code === Conditions.duplicateSite && x.subject === identity);
        return c ? { status: s, condition: c } : null;
      },
      { timeout: 30_000, message: `${site} never raised ${Conditions.duplicateSite} for ${identity}` },
    );

  it("a second site named like an existing one is refused; the first keeps working and raises DUPLICATE_SITE until the attempt is dealt with", async () => {
    const before = await record(memberKey("a"));
    const { out, code } = await impostor(
      mesh.sites.c!.url,
      ["--site", "a", "--domain", "c", "--instance", "impostor"],
      /SITE REFUSED/,
    );
    assert.match(out, /sites\.a is held by another site/);
    assert.equal(code, 1, "the later site refuses to run");
    assert.deepEqual(await record(memberKey("a")), before, "the first site's record is untouched");
    // the impostor runs at c's server, so it has c's identity (kept in that server's syncd_site)
    const impostorId = (await status(nc.c!, "c")).membership?.identity ?? "";
    const { status: st, condition } = await duplicate("a", impostorId);
    assert.equal(st.membership?.state, "member");
    assert.equal(condition.severity, "error");
    assert.match(condition.message, /this site's name/);
    assert.match(condition.message, /site a, domain c/);
    assert.equal(condition.data?.server_name, nc.c!.info?.server_name);
    assert.equal(condition.data?.server_id, nc.c!.info?.server_id);
    assert.equal(condition.data?.key, memberKey("a"));
    // shown by `syncd status`, and --check fails: a person must look
    const io = { out: [] as string[], err: [] as string[] };
    const sink = { out: (s: string) => io.out.push(s), err: (s: string) => io.err.push(s) };
    const checked = await cli(["status", "--check", "--site", "a", "--server", mesh.sites.a!.url], sink);
    assert.equal(checked, 1, io.out.join("\n"));
    assert.match(io.out.join("\n"), /DUPLICATE_SITE/);
    // dealt with (the impostor stopped or renamed): its record deleted, the condition clears
    await members.delete(refusedKey("a", impostorId));
    await until(
      async () => {
        const s = await status(nc.a!, "a");
        return s.conditions?.some((x) => x.code === Conditions.duplicateSite) ? null : s;
      },
      { message: `${Conditions.duplicateSite} never cleared at a` },
    );
    assert.equal((await status(nc.a!, "a")).severity, "ok");
  });

  it("a duplicate site's watcher does not take the first site's place among the hub's sources", async () => {
    const jsm = await jetstreamManager(hub, { domain: "hub" });
    const api = async () =>
      (await jsm.streams.info(Streams.hub)).config.sources?.find((s) => s.name === Streams.out("a"))?.external
        ?.api;
    assert.equal(await api(), "$JS.a.API");
    const { out } = await impostor(
      mesh.sites.c!.url,
      ["--site", "a", "--domain", "c", "--instance", "impostor"],
      /another site has this site's name/,
      "watcher",
    );
    assert.ok(!/registered the site's op log at the hub/.test(out), out);
    assert.equal(await api(), "$JS.a.API");
  });

  it("a second site with an existing JetStream domain is refused and leaves nothing behind", async () => {
    const { out, code } = await impostor(
      mesh.sites.c!.url,
      ["--site", "d", "--domain", "b", "--instance", "impostor"],
      /SITE REFUSED/,
    );
    assert.match(out, /domains\.b is held by another site/);
    assert.equal(code, 1);
    assert.equal(await record(memberKey("d")), null);
    assert.equal((await record(domainKey("b")))?.site, "b");
    // the owner of the domain sees it
    const impostorId = (await status(nc.c!, "c")).membership?.identity ?? "";
    const { condition } = await duplicate("b", impostorId);
    assert.match(condition.message, /JetStream domain/);
    assert.match(condition.message, /site d, domain b/);
    await members.delete(refusedKey("b", impostorId));
  });

  it("syncd site remove: refused while the site runs; once stopped, nothing of it is left", async () => {
    const io = { out: [] as string[], err: [] as string[] };
    const sink = { out: (s: string) => io.out.push(s), err: (s: string) => io.err.push(s) };
    const server = ["--server", mesh.sites.a!.url];
    assert.equal(await cli(["site", "remove", "c", ...server], sink), 1);
    assert.match(io.err.join("\n"), /still running/);
    await mesh.stopServices("c");
    // an attempt refused in c's name: removed with c
    await members.put(
      refusedKey("c", "someone"),
      JSON.stringify({
        key: "sites.c",
        site: "c",
        domain: "x",
        identity: "someone",
        at: new Date().toISOString(),
      }),
    );
    io.out.length = 0;
    assert.equal(await cli(["site", "remove", "c", ...server, "--json"], sink), 0, io.err.join("\n"));
    const res = JSON.parse(io.out.join("\n"));
    assert.deepEqual(res, {
      site: "c",
      domain: "c",
      member_record: true,
      domain_claim: true,
      hub_source: true,
      refused_records: 1,
    });
    assert.equal(await record(refusedKey("c", "someone")), null, "the refused record of c is left");
    assert.equal(await record(memberKey("c")), null);
    assert.equal(await record(domainKey("c")), null);
    const jsm = await jetstreamManager(hub, { domain: "hub" });
    const si = await jsm.streams.info(Streams.hub);
    assert.ok(!(si.config.sources ?? []).some((s) => s.name === Streams.out("c")), "hub still sources c");
    for (const s of ["a", "b"]) {
      const st = await until(
        async () => {
          const r = await status(nc[s]!, s);
          return r.peers.includes("c") ? null : r;
        },
        { message: `${s} still has peer c` },
      );
      assert.ok((st.counts.peers_removed ?? 0) >= 1);
    }
  });

  it("I1 the hub's source list: registrations raced against re-arms and a site remove; every writer's own change holds", async () => {
    const jsm = await jetstreamManager(hub, { domain: "hub" });
    const names = async () =>
      new Set(((await jsm.streams.info(Streams.hub)).config.sources ?? []).map((s) => s.name));
    const log = createLogger({ service: "test", site: "a", instance: "test", level: "silent" });
    // sites that only register (their op logs do not exist: the hub's sources of them just wait)
    const joining = ["r1", "r2", "r3", "r4"];
    const reg = (site: string) =>
      ensureHubRegistration(nc.a!, loadConfig(["--site", site, "--domain", "a"], {}), log);
    await reg("gone");
    const sink = { out: () => {}, err: () => {} };
    const [results] = await Promise.all([
      Promise.all(joining.map(reg)),
      rearmSource(jsm, Streams.hub, Streams.out("a")),
      rearmSource(jsm, Streams.hub, Streams.out("b")),
      cli(["site", "remove", "gone", "--server", mesh.sites.b!.url], sink),
    ]);
    // no waiting: each writer checked its own change after the others' writes in flight had landed
    const have = await names();
    for (const s of ["a", "b", ...joining]) assert.ok(have.has(Streams.out(s)), `${s} lost: ${[...have]}`);
    assert.ok(!have.has(Streams.out("gone")), "the removed site came back");
    // the hub's version as the site sees it (every server here is one binary)
    const hubVersion = results[0]!.hubVersion;
    assert.equal(sourcesBackOff(hubVersion), sourcesBackOff(hub.info?.version));
    assert.equal(hubVersion, versionOfStreamConfig((await jsm.streams.info(Streams.hub)).config));
    // deterministic: another writer read the list in the re-arm's gap (without a) and writes it
    // just after the re-arm put a back; the re-arm's check must see a gone and add it again
    let n = 0;
    let gap: StreamConfig | undefined;
    const streams = new Proxy(jsm.streams, {
      get(t, p) {
        if (p === "update")
          return async (name: string, cfg: StreamConfig) => {
            const r = await t.update(name, cfg);
            n++;
            if (n === 1) gap = r.config;
            if (n === 2) await t.update(name, gap!);
            return r;
          };
        const v = Reflect.get(t, p);
        return typeof v === "function" ? v.bind(t) : v;
      },
    });
    assert.equal(await rearmSource({ streams } as JetStreamManager, Streams.hub, Streams.out("a")), true);
    assert.ok(n >= 3, `the re-arm did not write a back after the stale write (${n} updates)`);
    assert.ok((await names()).has(Streams.out("a")), "the re-armed source was lost");
    for (const s of joining)
      assert.equal(await cli(["site", "remove", s, "--server", mesh.sites.b!.url], sink), 0);
    const left = await names();
    assert.ok(
      joining.every((s) => !left.has(Streams.out(s))),
      `${[...left]}`,
    );
  });
});
