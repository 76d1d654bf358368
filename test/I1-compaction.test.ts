/**
 * I1 on per-key compacted op logs (DESIGN §5): a log keeps one op per subject
 * `rep.kv.ops.<site>.<bucket>.<key>`, so the last op an origin publishes for a key must be the
 * greatest version it ever published for it. Racing publishers (two watcher instances of one site,
 * hand-made ops forwarded by the merger in any order) must not break that order. A source re-armed
 * after an outage (services/lib/rearm.ts) resumes after the last message it stored.
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import {
  MetaStore,
  type Op,
  Outcome,
  Streams,
  type WatcherDeps,
  createLogger,
  currentOwnOp,
  ensureOutStream,
  lastOp,
  loadConfig,
  makeOp,
  metaBucket,
  metaHoldsOp,
  opsSubject,
  publishOrdered,
  rearmSource,
  sourcedUpTo,
  stampEntry,
} from "../services/mod.ts";
import { call, contents, quiet, until, withLinkedMesh, withMesh } from "./helpers.ts";

const log = createLogger({ service: "test", site: "a", instance: "test", level: "silent" });
const config = loadConfig(["--site", "a"], {});

describe("I1 compacted op logs keep each key's greatest version (no services)", () => {
  const { nc } = withMesh({ sites: ["a"], services: false });
  before(async () => {
    await ensureOutStream(await jetstreamManager(nc.a!), config, 1, log);
  });

  it("I1 ordered publish: 40 versions of one key published concurrently in random order leave the greatest", async () => {
    const deps = { js: jetstream(nc.a!), jsm: await jetstreamManager(nc.a!) };
    const subject = opsSubject("a", "config", "race");
    const order = Array.from({ length: 40 }, (_, i) => i + 1).sort(() => Math.random() - 0.5);
    await Promise.all(
      order.map((ts) =>
        publishOrdered(
          deps,
          Streams.out("a"),
          subject,
          makeOp({
            bucket: "config",
            key: "race",
            ts,
            nodeId: "site-a",
            deleted: false,
            value: new Uint8Array([ts]),
          }),
        ),
      ),
    );
    const last = await lastOp(deps.jsm, Streams.out("a"), subject);
    assert.equal(last?.op?.ts, 40);
    const si = await deps.jsm.streams.info(Streams.out("a"), { subjects_filter: subject });
    assert.equal(si.state.subjects?.[subject], 1, "one message per key");
  });

  for (const fast of [false, true])
    it(`I1 two watcher instances racing on one key: the later stamp stays last even when it is published first${fast ? " (fast path: a fresh _meta read, no log reads)" : ""}`, async () => {
      const kvm = new Kvm(nc.a!);
      const data = await kvm.create("config", { history: 1 });
      const metaKv = await kvm.create(metaBucket("config"), { history: 1 });
      const k = fast ? "fast" : "k";
      /** what each fast-path check found */
      const checks: boolean[] = [];
      const meta = new MetaStore(metaKv);
      const js = jetstream(nc.a!);
      const jsm = await jetstreamManager(nc.a!);
      let release!: () => void;
      const gate = new Promise<void>((r) => {
        release = r;
      });
      let firstPublishReached!: () => void;
      const reached = new Promise<void>((r) => {
        firstPublishReached = r;
      });
      let clock = 1_000;
      const instance = (held: boolean): WatcherDeps => ({
        site: "a",
        nodeId: "site-a",
        bucket: "config",
        meta,
        jsm,
        current: (key) => currentOwnOp(metaKv, data, "site-a", "config", key),
        ...(fast
          ? {
              holds: async (op: Op) => {
                const h = await metaHoldsOp(metaKv, op);
                checks.push(h);
                return h;
              },
            }
          : {}),
        tick: async () => ++clock,
        js: {
          publish: async (subject, payload, opts) => {
            if (held) {
              firstPublishReached();
              await gate;
            }
            return js.publish(subject, payload, opts);
          },
        },
      });
      const r1 = await data.put(k, "v1");
      const r2 = await data.put(k, "v2");
      const entry = (rev: number, v: string) => ({
        key: k,
        rev,
        deleted: false,
        value: new TextEncoder().encode(v),
        headers: null,
      });
      // instance 1 stamps r1 and stalls just before its publish; instance 2 stamps r2 and publishes;
      // then r1's op lands last, and instance 1 must publish r2's version again
      const one = stampEntry(instance(true), entry(r1, "v1"));
      await reached;
      assert.equal(await stampEntry(instance(false), entry(r2, "v2")), Outcome.published);
      release();
      assert.equal(await one, Outcome.published);
      const last = await lastOp(jsm, Streams.out("a"), opsSubject("a", "config", k));
      assert.equal(last?.op?.op, "put");
      assert.equal(last?.op && "value" in last.op ? last.op.value : undefined, "v2");
      assert.equal(last?.op?.ts, (await meta.get(k))?.version.ts, "the log's last op is _meta's version");
      // the fast path: instance 2 found `_meta` holding its op; instance 1 did not (r2 was stamped)
      if (fast) assert.deepEqual(checks, [true, false]);
    });

  it("I1 a re-armed cross-domain source resumes after its last sourced message: nothing replayed, nothing skipped", async () => {
    // the shape of a site's FEED: a compacted stream whose only source is a stream in the hub's domain
    const hub = await jetstreamManager(nc.a!, { domain: "hub" });
    const hubJs = jetstream(nc.a!, { domain: "hub" });
    const site = await jetstreamManager(nc.a!);
    await hub.streams.add({ name: "REARM_ORIGIN", subjects: ["rearm.>"] });
    await site.streams.add({
      name: "REARM_COPY",
      max_msgs_per_subject: 1,
      sources: [{ name: "REARM_ORIGIN", external: { api: "$JS.hub.API", deliver: "" } }],
    });
    const copied = async (n: number) => (await site.streams.info("REARM_COPY")).state.last_seq >= n;
    for (let i = 1; i <= 5; i++) await hubJs.publish(`rearm.k${i}`, `v${i}`);
    await until(() => copied(5), { message: "the source did not deliver" });
    assert.equal(await rearmSource(site, "REARM_COPY", "REARM_ORIGIN"), true);
    const cfg = (await site.streams.info("REARM_COPY")).config;
    assert.deepEqual(
      cfg.sources?.map((s) => s.name),
      ["REARM_ORIGIN"],
    );
    assert.deepEqual(cfg.subjects ?? [], [], "the name subject the server gave it in between is gone");
    for (let i = 6; i <= 10; i++) await hubJs.publish(`rearm.k${i}`, `v${i}`);
    await hubJs.publish("rearm.k1", "v1.2");
    await until(() => copied(11), { message: "the re-armed source did not deliver" });
    // a replay from the origin's first message would store its 11 messages again
    await new Promise((r) => setTimeout(r, 1500));
    const st = (await site.streams.info("REARM_COPY")).state;
    assert.equal(st.last_seq, 11, "every origin message stored once");
    assert.equal(st.messages, 10);
    assert.equal(
      (await site.streams.getMessage("REARM_COPY", { last_by_subj: "rearm.k1" }))?.string(),
      "v1.2",
    );
    assert.equal(await rearmSource(site, "REARM_COPY", "NO_SUCH_SOURCE"), false);
  });

  it("I1 sourced up to: a source's lag left stale by the origin's compaction (nats-server 2.9) does not hide that the stream holds the origin's last message", async (t) => {
    // the shapes of a site's FEED (one source, the hub's aggregate) and of the aggregate (a source per site)
    const hub = await jetstreamManager(nc.a!, { domain: "hub" });
    const site = await jetstreamManager(nc.a!);
    const js = jetstream(nc.a!);
    const ext = (domain: string) => ({ api: `$JS.${domain}.API`, deliver: "" });
    await site.streams.add({ name: "UPTO_A", subjects: ["upto.a.>"], max_msgs_per_subject: 1 });
    await site.streams.add({ name: "UPTO_B", subjects: ["upto.b.>"], max_msgs_per_subject: 1 });
    await hub.streams.add({
      name: "UPTO_AGG",
      max_msgs_per_subject: 1,
      sources: [
        { name: "UPTO_A", external: ext("a") },
        { name: "UPTO_B", external: ext("a") },
      ],
    });
    await site.streams.add({
      name: "UPTO_FEED",
      max_msgs_per_subject: 1,
      sources: [{ name: "UPTO_AGG", external: ext("hub") }],
    });
    await js.publish("upto.b.k", "b");
    // a burst on a few subjects: most messages are replaced at the origin before they are sourced
    const burst = async (n: number) => {
      const ps: Promise<unknown>[] = [];
      for (let i = 0; i < n; i++) ps.push(js.publish(`upto.a.k${i % 5}`, `v${i}`));
      await Promise.all(ps);
    };
    const agg = { stream: "UPTO_AGG", domain: "hub" };
    const feed = { stream: "UPTO_FEED" };
    const old = /^2\.9\./.test(nc.a!.info?.version ?? "");
    // on 2.9 a burst leaves the lag stale most of the time: burst again until one does (at most 5)
    let stale = false;
    for (let round = 0; round < (old ? 5 : 1) && !stale; round++) {
      await burst(2000);
      const originLast = (await site.streams.info("UPTO_A")).state.last_seq;
      await until(async () => (await sourcedUpTo(nc.a!, agg, "UPTO_A")).caughtUp, {
        message: "the aggregate never held the origin's last message",
      });
      await until(async () => (await sourcedUpTo(nc.a!, feed, "UPTO_AGG")).caughtUp, {
        message: "the feed never held the aggregate's last message",
      });
      const a = await sourcedUpTo(nc.a!, agg, "UPTO_A");
      const f = await sourcedUpTo(nc.a!, feed, "UPTO_AGG");
      t.diagnostic(`server ${nc.a!.info?.version}: aggregate lag ${a.lag}, feed lag ${f.lag}`);
      // caught up with a lag above 0: the lag is stale, the stream holds the origin's last message
      if (a.lag !== 0)
        assert.equal(a.upTo, originLast, "the aggregate's last message from UPTO_A is its last");
      if (f.lag !== 0) assert.equal(f.upTo, f.originLast);
      stale = a.lag !== 0 || f.lag !== 0;
    }
    // what makes the fallback necessary
    if (old) assert.ok(stale, "nats-server 2.9 left no lag stale in 5 bursts");
    assert.equal((await sourcedUpTo(nc.a!, agg, "UPTO_B")).caughtUp, true, "the other source too");
    // a stream not caught up: the feed as it was before a message it has not got (its lag said 1)
    const before = await site.streams.info("UPTO_FEED");
    const snapshot = { ...before, sources: before.sources?.map((s) => ({ ...s, lag: 1 })) };
    const aggLast = (await hub.streams.info("UPTO_AGG")).state.last_seq;
    await js.publish("upto.b.k", "b2");
    await until(async () => (await hub.streams.info("UPTO_AGG")).state.last_seq > aggLast);
    const behind = await sourcedUpTo(nc.a!, { ...feed, info: snapshot }, "UPTO_AGG");
    assert.equal(behind.caughtUp, false, JSON.stringify(behind));
    assert.ok((behind.upTo ?? 0) < (behind.originLast ?? 0));
    assert.equal((await sourcedUpTo(nc.a!, feed, "NO_SUCH_SOURCE")).caughtUp, false);
  });
});

describe("I1 hand-made ops are forwarded only as the key's current winner", () => {
  const { mesh, nc } = withLinkedMesh({ sites: ["a", "b"], serviceArgs: ["--reconcile-interval", "0"] });

  const hand = (key: string, ts: number, value: string) =>
    JSON.stringify({ op: "put", bucket: "config", key, value, ts, node_id: "hand" });

  it("I1 a newer hand-made op, then an older one: the log and every site keep the newer", async () => {
    const ts = Date.now() * 1000;
    nc.a!.publish("rep.kv.ops", hand("h1", ts + 2, "newer"));
    await nc.a!.flush();
    await until(async () => (await contents(await mesh.kv("a"))).get("h1") === "newer");
    nc.a!.publish("rep.kv.ops", hand("h1", ts + 1, "older"));
    await nc.a!.flush();
    await quiet(nc);
    const jsm = await jetstreamManager(nc.a!);
    const last = await lastOp(jsm, Streams.out("a"), opsSubject("a", "config", "h1"));
    assert.equal(last?.op?.ts, ts + 2);
    assert.equal((await contents(await mesh.kv("b"))).get("h1"), "newer");
    const st = await call<{ counts: Record<string, number> }>(nc.a!, "a", "merger", "status");
    assert.ok((st.counts.stale ?? 0) >= 1, JSON.stringify(st.counts));
  });

  it("I1 a hand-made op older than the site's own write is not forwarded over it", async () => {
    const kvA = await mesh.kv("a");
    await kvA.put("h2", "local");
    await until(async () => (await contents(await mesh.kv("b"))).get("h2") === "local");
    nc.a!.publish("rep.kv.ops", hand("h2", 1, "ancient"));
    await nc.a!.flush();
    await quiet(nc);
    const last = await lastOp(
      await jetstreamManager(nc.a!),
      Streams.out("a"),
      opsSubject("a", "config", "h2"),
    );
    assert.equal(last?.op?.node_id, "site-a");
    assert.equal((await contents(await mesh.kv("b"))).get("h2"), "local");
  });
});
