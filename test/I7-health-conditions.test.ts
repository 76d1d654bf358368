/**
 * I7 (nothing silent, #12.6): one health model on real servers — every service's STATS data and
 * status endpoint carry its conditions; a store near its limits is raised (error when a full store
 * refuses writes, a warning for a log that drops its oldest); `syncd status` shows a healthy mesh as
 * such and `--check` exits 0 then.
 *
 * Extended to every condition of #12, on the same mesh: each is raised by the service that
 * detects it, shows in `syncd status --json` (from the instances' micro STATS data) with its severity,
 * makes `syncd status --check` exit 1 when a person is needed (severity error) and 0 for a warning,
 * and is cleared when it is over. On real servers and real service processes:
 * a value too large (watcher), a key stuck (consumer loop), a peer lost (reconciler), values lost
 * and divergence repaired (merger monitor, reconciler), a bucket deleted / re-created and a consumer
 * missing (merger monitor, watcher's consumer loop), values purged and put back (merger monitor),
 * the site removed from the mesh (reconciler), a `_meta` entry written by hand that is not a
 * version (watcher, merger).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import {
  Conditions,
  MEMBERS_BUCKET,
  type MergerStatusResponse,
  type WatcherStatusResponse,
  checkStores,
  createLogger,
  health,
  kvStream,
  memberKey,
  metaBucket,
  parseVersion,
  run,
} from "../services/mod.ts";
import { HUB_DOMAIN, call, loseValue, until, withLinkedMesh } from "./helpers.ts";
import { collectStats } from "./workload.ts";

type Cond = { code: string; severity: string; subject?: string; service: string; message: string };
type Checked = { code: number; conditions: Cond[] };

const ONE_MB = 1024 * 1024;
const log = createLogger({ service: "test", site: "a", instance: "t", level: "silent" });
const T = { timeout: 60_000, interval: 500 };

describe("I7 every condition of #12 in syncd status", () => {
  const m = withLinkedMesh({ sites: ["a", "b"], serviceArgs: ["--reconcile-interval", "0"] });

  /** `syncd status --check --json --site <site>`: its exit code and the site's conditions. */
  const check = async (site: string): Promise<Checked> => {
    const out: string[] = [];
    const err: string[] = [];
    const code = await run(
      ["status", "--check", "--json", "--site", site, "--server", m.mesh.sites[site]!.url],
      { out: (s) => void out.push(s), err: (s) => void err.push(s) },
      {},
    );
    assert.ok(out.length > 0, err.join("\n"));
    const data = JSON.parse(out.join("\n")) as { sites: { conditions: Cond[] }[] };
    return { code, conditions: data.sites.flatMap((s) => s.conditions) };
  };
  const find = (c: Checked, code: string, subject?: string) =>
    c.conditions.find((x) => x.code === code && (subject === undefined || x.subject === subject));
  /** wait until the condition shows (with that severity) at the site; returns the whole check */
  const raised = (site: string, code: string, severity: string, subject?: string) =>
    until(
      async () => {
        const c = await check(site);
        return find(c, code, subject)?.severity === severity ? c : null;
      },
      { ...T, message: `${code} ${subject ?? ""} (${severity}) at ${site}` },
    );
  const cleared = (site: string, code: string, subject?: string) =>
    until(
      async () => {
        const c = await check(site);
        return find(c, code, subject) ? null : c;
      },
      { ...T, message: `${code} ${subject ?? ""} cleared at ${site}` },
    );
  /** wait until the site has no condition that needs a person: --check passes again */
  const healthy = (site: string) =>
    until(
      async () => {
        const c = await check(site);
        return c.code === 0 ? c : null;
      },
      { ...T, message: `--check passes at ${site}` },
    );
  const textAt = async (site: string, key: string) => (await m.kv[site]!.get(key))?.string();

  it("every service shows its conditions in STATS data and in its status; a healthy mesh passes --check", async () => {
    for (const svc of ["syncd-clock", "syncd-watcher", "syncd-merger", "syncd-reconciler"]) {
      const stats = await until(async () => {
        const s = await collectStats(m.nc.a!, svc);
        return s.length >= 2 ? s : null;
      });
      for (const s of stats) {
        const withData = s.endpoints.filter((e) => e.data && typeof e.data === "object");
        assert.ok(withData.length > 0, `${svc}: no STATS data`);
        for (const e of withData)
          assert.ok(Array.isArray((e.data as { conditions?: unknown }).conditions), `${svc}.${e.name}`);
      }
    }
    const w = await call<WatcherStatusResponse>(m.nc.a!, "a", "watcher", "status");
    const mg = await call<MergerStatusResponse>(m.nc.b!, "b", "merger", "status");
    assert.deepEqual(w.conditions, []);
    assert.deepEqual(mg.conditions, []);
    const lines: string[] = [];
    const io = { out: (s: string) => void lines.push(s), err: (s: string) => void lines.push(s) };
    const code = await run(["status", "--check", "--server", m.mesh.sites.a!.url], io, {});
    assert.equal(code, 0, lines.join("\n"));
    assert.match(lines.join("\n"), /health: ok/);
  });

  it("a store near its limits is raised: error when full means refused writes, warn for a rotating log", async () => {
    const kvm = new Kvm(m.nc.a!);
    const small = await kvm.create("nearly_full", { max_bytes: 4096, history: 1 });
    const value = "x".repeat(20);
    for (let i = 0; ; i++) {
      try {
        await small.put(`k${i}`, value);
      } catch {
        break;
      }
    }
    const jsm = await jetstreamManager(m.nc.a!);
    await jsm.streams.add({
      name: "ROTATING_LOG",
      subjects: ["rotating.log"],
      max_msgs: 10,
      discard: "old",
    } as never);
    for (let i = 0; i < 20; i++) await jetstream(m.nc.a!).publish("rotating.log", "m");
    // an op log: one message per key, the oldest (a key's only op) dropped when full
    await jsm.streams.add({
      name: "COMPACTED_LOG",
      subjects: ["compacted.>"],
      max_msgs: 10,
      max_msgs_per_subject: 1,
      discard: "old",
    } as never);
    for (let i = 0; i < 20; i++) await jetstream(m.nc.a!).publish(`compacted.k${i}`, "op");
    const usage = await checkStores(
      jsm,
      [kvStream("nearly_full"), "ROTATING_LOG", "COMPACTED_LOG", "NO_SUCH_STREAM"],
      log,
    );
    assert.equal(usage.filter((u) => u.name !== "account storage" && u.name !== "account memory").length, 3);
    const byName = new Map(
      health
        .list()
        .filter((c) => c.code === Conditions.storeFilling)
        .map((c) => [c.subject, c]),
    );
    assert.equal(byName.get(kvStream("nearly_full"))?.severity, "error", JSON.stringify([...byName]));
    assert.equal(byName.get("ROTATING_LOG")?.severity, "warn");
    assert.equal(byName.get("COMPACTED_LOG")?.severity, "error");
    assert.match(byName.get("COMPACTED_LOG")?.message ?? "", /anti-entropy/);
    // emptied: cleared
    await jsm.streams.purge(kvStream("nearly_full"));
    await checkStores(jsm, [kvStream("nearly_full")], log);
    assert.ok(!health.list().some((c) => c.subject === kvStream("nearly_full")));
    // the mesh is shared with the cases below
    await jsm.streams.delete(kvStream("nearly_full"));
    await jsm.streams.delete("ROTATING_LOG");
    await jsm.streams.delete("COMPACTED_LOG");
    health.clear(Conditions.storeFilling, "COMPACTED_LOG");
    health.clear(Conditions.storeFilling, "ROTATING_LOG");
  });

  it("VALUE_TOO_LARGE: a local write too large to travel is raised by the watcher (error); a later write of the key clears it", async () => {
    await m.kv.a!.put("edge", new Uint8Array(randomBytes(ONE_MB - 64)));
    const c = await raised("a", Conditions.valueTooLarge, "error", "config/edge");
    assert.equal(c.code, 1);
    assert.equal(find(c, Conditions.valueTooLarge, "config/edge")?.service, "syncd-watcher");
    await m.kv.a!.put("edge", "small again");
    await until(async () => (await textAt("b", "edge")) === "small again", T);
    await cleared("a", Conditions.valueTooLarge, "config/edge");
    assert.equal((await healthy("a")).code, 0);
  });

  it("KEY_STUCK: a local write that keeps failing (its _meta store refuses it) is raised, warn then error; cleared when it goes through", async () => {
    // `_meta` holds at least one version (max_msgs 0 would mean no limit)
    await m.kv.a!.put("before.stuck", "1");
    await until(async () => (await textAt("b", "before.stuck")) === "1", T);
    const jsm = await jetstreamManager(m.nc.a!);
    const metaStream = kvStream(metaBucket("config"));
    const info = await jsm.streams.info(metaStream);
    assert.ok(info.state.messages > 0);
    // `_meta` holds as many messages as it may: a new key's version cannot be committed
    await jsm.streams.update(metaStream, { ...info.config, max_msgs: info.state.messages });
    try {
      await m.kv.a!.put("stuck.k", "S");
      const warn = await raised("a", Conditions.keyStuck, "warn", "config/stuck.k");
      assert.equal(warn.code, find(warn, Conditions.storeFilling) ? 1 : 0);
      const c = await raised("a", Conditions.keyStuck, "error", "config/stuck.k");
      assert.equal(c.code, 1);
      assert.equal(find(c, Conditions.keyStuck, "config/stuck.k")?.service, "syncd-watcher");
    } finally {
      await jsm.streams.update(metaStream, { ...info.config, max_msgs: -1 });
    }
    await until(async () => (await textAt("b", "stuck.k")) === "S", { ...T, message: "stuck.k reaches b" });
    await cleared("a", Conditions.keyStuck, "config/stuck.k");
    // STORE_FILLING of `_meta` clears at the clock's next store check
    assert.equal((await healthy("a")).code, 0);
  });

  it("KEY_STUCK: an op that keeps failing at a site (its bucket refuses the write) is raised by the merger; cleared when it is applied", async () => {
    await m.kv.a!.put("before.op.stuck", "1");
    await until(async () => (await textAt("b", "before.op.stuck")) === "1", T);
    const jsm = await jetstreamManager(m.nc.b!);
    const info = await jsm.streams.info(kvStream("config"));
    assert.ok(info.state.messages > 0);
    // b's bucket holds as many messages as it may: a new key from a cannot be written there
    await jsm.streams.update(kvStream("config"), { ...info.config, max_msgs: info.state.messages });
    try {
      await m.kv.a!.put("op.stuck", "O");
      const c = await raised("b", Conditions.keyStuck, "error", "config/op.stuck");
      assert.equal(c.code, 1);
      assert.equal(find(c, Conditions.keyStuck, "config/op.stuck")?.service, "syncd-merger");
      // `_meta` holds the op's version, the bucket not its value: the merger's monitor tries to put
      // it back, and says the bucket refused it (not "no op to repair from")
      const lost = await raised("b", Conditions.valuesLost, "error", "config");
      assert.match(find(lost, Conditions.valuesLost, "config")?.message ?? "", /refused/);
    } finally {
      await jsm.streams.update(kvStream("config"), { ...info.config, max_msgs: -1 });
    }
    await until(async () => (await textAt("b", "op.stuck")) === "O", {
      ...T,
      message: "op.stuck applied at b",
    });
    await cleared("b", Conditions.keyStuck, "config/op.stuck");
    assert.equal((await healthy("b")).code, 0);
  });

  it("META_INVALID: _meta entries written by hand that are not versions are raised (warn: --check passes) and replaced by the next op or write of their key", async () => {
    await m.kv.a!.put("meta.bad", "1");
    await until(async () => (await textAt("b", "meta.bad")) === "1", T);
    const meta = await new Kvm(m.nc.b!).open(metaBucket("config"));
    await meta.put("meta.bad", "not a version");
    await meta.put("meta.bad2", JSON.stringify({ ts: "soon", node_id: "b" }));
    const c = await raised("b", Conditions.metaInvalid, "warn", "config_meta/meta.bad");
    assert.equal(c.code, 0);
    await raised("b", Conditions.metaInvalid, "warn", "config_meta/meta.bad2");
    // an op from a replaces the first, a local write at b the second
    await m.kv.a!.put("meta.bad", "2");
    await m.kv.b!.put("meta.bad2", "local");
    await until(async () => (await textAt("b", "meta.bad")) === "2", {
      ...T,
      message: "meta.bad applied at b",
    });
    await until(async () => (await textAt("a", "meta.bad2")) === "local", {
      ...T,
      message: "meta.bad2 replicated from b",
    });
    for (const key of ["meta.bad", "meta.bad2"]) {
      const e = await meta.get(key);
      assert.ok(e && parseVersion(e.value), `b's _meta holds a version of ${key} again`);
    }
  });

  it("PEER_LOST: a peer whose services stopped is raised by the reconciler after a failed run (warn: --check passes); cleared when it answers again", async () => {
    await m.mesh.stopServices("b");
    try {
      await call(m.nc.a!, "a", "reconciler", "run", { peers: ["b"] }).catch(() => {});
      const c = await raised("a", Conditions.peerLost, "warn", "b");
      assert.equal(c.code, 0, JSON.stringify(c.conditions));
      assert.equal(find(c, Conditions.peerLost, "b")?.service, "syncd-reconciler");
    } finally {
      await m.mesh.startServices("b");
    }
    await until(
      async () => {
        await call(m.nc.a!, "a", "reconciler", "run", { peers: ["b"] }).catch(() => {});
        return !find(await check("a"), Conditions.peerLost, "b");
      },
      { ...T, message: "PEER_LOST cleared after a run that reached b" },
    );
  });

  it("VALUES_LOST and DIVERGENCE_REPAIRED: values gone with no op to repair from are an error; anti-entropy brings them back (a warning) and the error clears", async () => {
    await loseValue(m, "a", "b", "lost.k", "L", T.timeout);
    const c = await raised("a", Conditions.valuesLost, "error", "config");
    assert.equal(c.code, 1);
    assert.equal(find(c, Conditions.valuesLost, "config")?.service, "syncd-merger");
    // anti-entropy pulls them back from b
    await until(
      async () => {
        await call(m.nc.a!, "a", "reconciler", "run", { peers: ["b"] }).catch(() => {});
        return (await textAt("a", "lost.k")) === "L";
      },
      { ...T, message: "lost.k back at a" },
    );
    const r = await raised("a", Conditions.divergenceRepaired, "warn", "config/b");
    assert.equal(find(r, Conditions.divergenceRepaired, "config/b")?.service, "syncd-reconciler");
    // the merger's monitor sees the value back at its next scan
    await cleared("a", Conditions.valuesLost, "config");
    assert.equal((await healthy("a")).code, 0);
  });

  it("VALUES_RESTORED: values purged from a bucket come back from the site's op streams, raised as a warning (--check passes)", async () => {
    for (const k of ["purged.1", "purged.2", "purged.3"]) await m.kv.a!.put(k, k);
    await until(async () => (await textAt("b", "purged.3")) === "purged.3", T);
    // a purge of these keys' subjects: the other tests' values stay as they are
    const gone = await (await jetstreamManager(m.nc.a!)).streams.purge(kvStream("config"), {
      filter: "$KV.config.purged.>",
    });
    assert.equal(gone.purged, 3);
    const c = await raised("a", Conditions.valuesRestored, "warn", "config");
    assert.equal(find(c, Conditions.valuesRestored, "config")?.service, "syncd-merger");
    assert.match(find(c, Conditions.valuesRestored, "config")?.message ?? "", /put back/);
    for (const k of ["purged.1", "purged.2", "purged.3"]) assert.equal(await textAt("a", k), k);
    assert.equal((await healthy("a")).code, 0);
  });

  it("SITE_REFUSED: a site whose member record is removed under its running reconciler is an error there; it clears when the site joins again", async () => {
    const hub = await m.mesh.connectHub();
    const members = await new Kvm(jetstream(hub, { domain: HUB_DOMAIN })).open(MEMBERS_BUCKET);
    await until(async () => (await members.get(memberKey("b")))?.operation === "PUT", T);
    await members.delete(memberKey("b"));
    const c = await raised("b", Conditions.siteRefused, "error", "b");
    assert.equal(c.code, 1);
    assert.equal(find(c, Conditions.siteRefused, "b")?.service, "syncd-reconciler");
    await m.mesh.stopServices("b");
    await m.mesh.startServices("b");
    await until(async () => (await members.get(memberKey("b")))?.operation === "PUT", {
      ...T,
      message: "b joined again",
    });
    await cleared("b", Conditions.siteRefused);
    assert.equal((await healthy("b")).code, 0);
  });

  it("BUCKET_RECREATED and CONSUMER_MISSING: a bucket deleted is an error (merger) and its watcher's consumer missing too; created again, both become warnings and --check passes", async () => {
    await m.kv.b!.put("before.rm", "B");
    await until(async () => (await textAt("a", "before.rm")) === "B", T);
    await (await jetstreamManager(m.nc.b!)).streams.delete(kvStream("config"));
    const c = await until(
      async () => {
        const x = await check("b");
        return find(x, Conditions.bucketRecreated, "config")?.severity === "error" &&
          find(x, Conditions.consumerMissing)?.severity === "error"
          ? x
          : null;
      },
      { ...T, message: "bucket missing and consumer missing raised at b" },
    );
    assert.equal(c.code, 1);
    assert.equal(find(c, Conditions.bucketRecreated, "config")?.service, "syncd-merger");
    assert.equal(find(c, Conditions.consumerMissing)?.service, "syncd-watcher");
    await new Kvm(m.nc.b!).create("config", { history: 1 });
    const w = await until(
      async () => {
        const x = await check("b");
        const bad = x.conditions.filter(
          (k) =>
            (k.code === Conditions.bucketRecreated || k.code === Conditions.consumerMissing) &&
            k.severity !== "warn",
        );
        return bad.length === 0 && find(x, Conditions.bucketRecreated, "config") ? x : null;
      },
      { ...T, message: "re-created: warnings only" },
    );
    assert.ok(find(w, Conditions.consumerMissing), JSON.stringify(w.conditions));
    await until(async () => (await textAt("b", "before.rm")) === "B", { ...T, message: "restored at b" });
    assert.equal((await healthy("b")).code, 0);
  });
});
