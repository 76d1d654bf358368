/**
 * I6 crash safety, extended to the stores themselves (issue #12 point 3): the watcher and the merger
 * survive their streams and consumers being deleted or re-created. They notice within seconds,
 * re-seed, and nothing from an earlier incarnation of a bucket (revisions in `_meta`, message ids)
 * suppresses a new write (I3); a re-created or purged bucket gets its values back from the site's
 * own op streams (I1), and what cannot be repaired is counted and raised.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import { CLOCK_BUCKET, Durables, Streams, kvStream } from "../services/mod.ts";
import { HUB_DOMAIN, call, loseValue, until, withLinkedMesh, withMesh } from "./helpers.ts";

// the watchers' hub check every 2 s (not 15): the aggregate's deletion is seen sooner
process.env.SYNCD_HUB_RECHECK_MS = "2000";

type Status = { counts: Record<string, number>; last_error?: string };
type WatcherStatus = { buckets: { counts: Record<string, number> }[]; last_error?: string };

describe("I6 re-created streams and consumers", () => {
  const m = withLinkedMesh({ sites: ["a", "b"], serviceArgs: ["--reconcile-interval", "0"] });
  const T = { timeout: 30_000 };

  const textAt = async (site: string, key: string) => (await m.kv[site]!.get(key))?.string();

  it("I3 a bucket deleted and created again at b: new writes at b replicate, b gets its values back", async () => {
    // history at b: many revisions, so the old incarnation's revisions are above the new ones
    for (let i = 0; i < 20; i++) await m.kv.b!.put(`k${i % 5}`, `old-${i}`);
    await m.kv.a!.put("from.a", "A");
    for (let i = 15; i < 20; i++) {
      await until(async () => (await textAt("a", `k${i % 5}`)) === `old-${i}`, {
        ...T,
        message: `k${i % 5} at a`,
      });
    }
    await until(async () => (await textAt("b", "from.a")) === "A", T);

    // `nats kv rm config` + `nats kv add config`
    await (await jetstreamManager(m.nc.b!)).streams.delete(kvStream("config"));
    await new Kvm(m.nc.b!).create("config", { history: 1 });
    // a new write of an old key at a low revision, and a new key
    await m.kv.b!.put("k1", "new-1");
    await m.kv.b!.put("fresh", "F");
    await until(async () => (await textAt("a", "k1")) === "new-1", {
      ...T,
      message: "k1 rewritten at b reaches a",
    });
    await until(async () => (await textAt("a", "fresh")) === "F", {
      ...T,
      message: "a new key at b reaches a",
    });
    // what b held comes back at b: its own writes and the one from a
    for (const k of ["k0", "k2", "k3", "k4"]) {
      const want = `old-${15 + Number(k.slice(1))}`;
      await until(async () => (await textAt("b", k)) === want, { ...T, message: `${k} restored at b` });
    }
    await until(async () => (await textAt("b", "from.a")) === "A", { ...T, message: "from.a restored at b" });
    assert.equal(await textAt("b", "k1"), "new-1");
    assert.equal(await textAt("a", "k1"), "new-1");
    const st = await call<Status>(m.nc.b!, "b", "merger", "status");
    assert.ok((st.counts.bucket_recreated ?? 0) >= 1, JSON.stringify(st));
    assert.ok((st.counts.repaired ?? 0) >= 5, JSON.stringify(st));
    // later writes keep flowing both ways
    await m.kv.b!.put("k2", "after-2");
    await m.kv.a!.put("k3", "after-3");
    await until(async () => (await textAt("a", "k2")) === "after-2", T);
    await until(async () => (await textAt("b", "k3")) === "after-3", T);
  });

  it("I6 the watcher's consumer deleted: re-made within seconds, the writes meanwhile are published", async () => {
    const jsm = await jetstreamManager(m.nc.a!);
    // nats-server 2.9 may answer "directory not empty" while deleting an active consumer (its
    // files are removed in the background); the consumer is gone all the same
    await jsm.consumers.delete(kvStream("config"), Durables.watcher("a", "config")).catch((err) => {
      if (!/directory not empty/.test(String(err))) throw err;
    });
    await m.kv.a!.put("during.gap", "G");
    await until(async () => (await textAt("b", "during.gap")) === "G", {
      ...T,
      message: "write during the gap",
    });
    // (asked until one counts it: a site may run several watchers)
    await until(
      async () =>
        ((await call<WatcherStatus>(m.nc.a!, "a", "watcher", "status")).buckets[0]?.counts.recreated ?? 0) >=
        1,
      { message: "no watcher of a counts the consumer re-made" },
    );
  });

  // nats-server 2.9.10 removes a deleted stream's files after the delete request returned: a FEED
  // made again at once lost its store directory to that removal and stored and delivered nothing
  // (server log: "open …/SYNCD_FEED_a/msgs/1.blk: no such file or directory"); the merger waits
  // DELETED_STREAM_SETTLE_MS before making it again
  it("I6 the merger's FEED stream deleted: made again, ops flow again through it (nats-server 2.9 too)", async () => {
    const jsm = await jetstreamManager(m.nc.a!);
    await jsm.streams.delete(Streams.in("a"));
    await until(
      async () => {
        try {
          await jsm.consumers.info(Streams.in("a"), Durables.merger);
          return true;
        } catch {
          return false;
        }
      },
      { ...T, message: "FEED stream and merger durable made again" },
    );
    // a hand-made op goes through the ingress stream, whose consumer the same merger runs
    m.nc.a!.publish(
      "rep.kv.ops",
      JSON.stringify({ op: "put", bucket: "config", key: "after.in", value: "I", ts: 5, node_id: "hand" }),
    );
    await until(async () => (await textAt("a", "after.in")) === "I", {
      ...T,
      message: "op after FEED re-made",
    });
    // the re-made FEED sources the hub again: b's ops reach a through it
    await m.kv.b!.put("after.feed", "F");
    await until(async () => (await textAt("a", "after.feed")) === "F", {
      ...T,
      message: `b's op through the re-made FEED of a\n${m.mesh.logs("a", 20)}`,
    });
    const si = await jsm.streams.info(Streams.in("a"));
    assert.ok(si.state.messages > 0, JSON.stringify(si.state));
    const serverLog = readFileSync(m.mesh.topology.site("a").logFile, "utf8");
    assert.doesNotMatch(
      serverLog,
      /SYNCD_FEED_a\/msgs\/\d+\.blk: no such file/,
      "the re-made FEED lost its store",
    );
  });

  it("I6 a site's op log deleted under two watchers: both make it again past what the hub holds from it, the site's writes reach the others again", async () => {
    // a second watcher at a for this test: both find the log deleted, and both make it again
    const [second] = await m.mesh.startServices("a", "watcher=2");
    assert.equal(second?.kind, "watcher");
    try {
      await opLogDeleted();
    } finally {
      await second?.stop();
    }
  });

  const opLogDeleted = async () => {
    // the log's numbering well above what a fresh log's seed takes (one op per key): the hub
    // resumes after it
    const jsm = await jetstreamManager(m.nc.a!);
    const outAt = async () => (await jsm.streams.info(Streams.out("a"))).state.last_seq;
    for (let i = 0; i < 60; i++) {
      const was = await outAt();
      await m.kv.a!.put("before.out", `${i}`);
      await until(async () => (await outAt()) > was, { ...T, message: `write ${i} published` });
    }
    await until(async () => (await textAt("b", "before.out")) === "59", { ...T, message: "before" });
    const old = await outAt();
    assert.ok(old >= 60, `a's op log at ${old}`);
    await jsm.streams.delete(Streams.out("a"));
    await m.kv.a!.put("after.out", "O");
    await until(async () => (await textAt("b", "after.out")) === "O", {
      ...T,
      message: `a's write after its OUT was deleted\n${m.mesh.logs("a", 20)}`,
    });
    // and the next ones, through the hub's source of the re-made log
    await m.kv.a!.put("after.out.2", "P");
    await until(async () => (await textAt("b", "after.out.2")) === "P", { ...T, message: "the next write" });
    const now = await jsm.streams.info(Streams.out("a"));
    assert.ok(
      now.state.first_seq > old,
      `the new log numbers past the old one: ${JSON.stringify(now.state)}`,
    );
  };

  it("I6 the hub's aggregate stream deleted: made again, writes flow both ways again", async () => {
    await m.kv.b!.put("before.hub", "1");
    await until(async () => (await textAt("a", "before.hub")) === "1", { ...T, message: "before" });
    const hubJsm = await jetstreamManager(m.nc.a!, { domain: HUB_DOMAIN });
    await hubJsm.streams.delete(Streams.hub);
    await m.kv.a!.put("after.hub.a", "A");
    await m.kv.b!.put("after.hub.b", "B");
    await until(async () => (await textAt("b", "after.hub.a")) === "A", {
      ...T,
      timeout: 60_000,
      message: `a's write after the hub's aggregate was deleted\n${m.mesh.logs("a", 20)}`,
    });
    await until(async () => (await textAt("a", "after.hub.b")) === "B", {
      ...T,
      timeout: 60_000,
      message: `b's write after the hub's aggregate was deleted\n${m.mesh.logs("b", 20)}`,
    });
  });

  it("I6 the clock bucket deleted: made again, the site's writes go on replicating", async () => {
    const jsm = await jetstreamManager(m.nc.a!);
    await jsm.streams.delete(kvStream(CLOCK_BUCKET));
    // a fresh timestamp block: the watcher's clock client asks the clock service for one
    await new Promise((r) => setTimeout(r, 100));
    await m.kv.a!.put("after.clock", "C");
    await until(async () => (await textAt("b", "after.clock")) === "C", {
      ...T,
      message: `a's write after its clock bucket was deleted\n${m.mesh.logs("a", 20)}`,
    });
    await jsm.streams.info(kvStream(CLOCK_BUCKET));
  });

  it("I1 `nats stream purge KV_config` at a: the values come back from a's op streams", async () => {
    await m.kv.a!.put("p1", "P1");
    await m.kv.b!.put("p2", "P2");
    await until(async () => (await textAt("a", "p2")) === "P2", T);
    const jsm = await jetstreamManager(m.nc.a!);
    await jsm.streams.purge(kvStream("config"));
    await until(async () => (await textAt("a", "p1")) === "P1", { ...T, message: "p1 restored at a" });
    await until(async () => (await textAt("a", "p2")) === "P2", { ...T, message: "p2 restored at a" });
    // restored values are not new writes: b keeps them, nothing is published again as new
    assert.equal(await textAt("b", "p1"), "P1");
  });

  it("I1 a vanished value with no op left to repair from is counted and raised in the merger's status", async () => {
    await loseValue(m, "a", "b", "lost.k", "L", T.timeout);
    const st = await until(
      async () => {
        const s = await call<Status>(m.nc.a!, "a", "merger", "status");
        return (s.counts.unrepaired ?? 0) > 0 ? s : null;
      },
      { ...T, message: "unrepaired counted" },
    );
    assert.match(st.last_error ?? "", /vanished value/);
    assert.equal(await textAt("a", "lost.k"), undefined);
  });
});

describe("I1 a bucket whose values expire (max age)", () => {
  // a watcher refuses such a bucket at start (expiries without delete markers would not replicate:
  // test/I1-kv-markers.test.ts); a merger alone keeps working and must not bring expired values back
  const m = withMesh({ sites: ["a"], services: false, buckets: ["config", "ttl"], scale: { watcher: 0 } });
  let nc: NatsConnection;
  before(async () => {
    nc = m.nc.a!;
    await new Kvm(nc).create("ttl", { history: 1, ttl: 2000 });
    await m.mesh.startServices("a");
  });

  it("I1 an expired value is reported (vanished), not brought back", async () => {
    const kv = await new Kvm(nc).open("ttl");
    // a value the merger applied (with its `_meta` version), which then expires
    await call(nc, "a", "merger", "merge", {
      op: "put",
      bucket: "ttl",
      key: "short",
      value: "lived",
      ts: Date.now() * 1000,
      node_id: "site-z",
    });
    assert.equal((await kv.get("short"))?.string(), "lived");
    const st = await until(
      async () => {
        const s = await call<Status>(nc, "a", "merger", "status");
        return (s.counts.vanished ?? 0) > 0 ? s : null;
      },
      { timeout: 30_000, message: "expired value reported" },
    );
    assert.equal(st.counts.repaired ?? 0, 0);
    assert.equal(await kv.get("short"), null);
  });
});
