/**
 * syncd-reconciler on a real hub + two leaf sites with all four services: differences made behind
 * the services' back (bucket + `_meta` written directly, with version headers, so no op is
 * published) are found by digest descent and repaired in both directions, tombstones included,
 * moving exactly the differing entries; equal sites move nothing.
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { type JetStreamClient, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import {
  type ReconcilerDigestResponse,
  type ReconcilerEntriesResponse,
  type ReconcilerRunResponse,
  type ReconcilerStatusResponse,
  ServiceReplyError,
  endpointSubject,
  kvStream,
  kvSubject,
  mergerHeaders,
  metaBucket,
  requestJson,
  valueHash,
} from "../services/mod.ts";
import { contents, plantVersion, quiet, until, versions, withLinkedMesh } from "./helpers.ts";

const BUCKET = "config";
type Site = "a" | "b";
type V = { ts: number; node_id: string; deleted: boolean };

describe("I1 anti-entropy: reconciler anti-entropy between two leaf sites", () => {
  const { nc, kv } = withLinkedMesh({
    sites: ["a", "b"],
    serviceArgs: ["--reconcile-interval", "0"],
  }) as {
    nc: Record<Site, NatsConnection>;
    kv: Record<Site, KV>;
  };
  const meta = {} as Record<Site, KV>;
  const js = {} as Record<Site, JetStreamClient>;

  before(async () => {
    for (const s of ["a", "b"] as const) {
      meta[s] = await new Kvm(nc[s]).open(metaBucket(BUCKET));
      js[s] = jetstream(nc[s]);
    }
  });

  const call = async <T>(site: Site, endpoint: string, body: unknown, timeout = 30_000): Promise<T> =>
    (await requestJson<T>(nc[site], endpointSubject(site, "reconciler", endpoint), body, { timeout })).value;

  /**
   * Write a version behind the services' back, as a merger commits it: bucket entry with headers,
   * then `_meta` with `merged` and the value hash (`legacy`: without them, as older code wrote it).
   */
  const plant = async (site: Site, key: string, v: V, value = "", opts: { legacy?: boolean } = {}) => {
    await plantVersion(nc[site], { key, ...v, value, ...(opts.legacy ? { legacy: true } : {}) });
  };

  /** The versions a site's reconciler index holds for some keys. */
  const indexed = async (site: Site, keys: string[]) => {
    const r = await call<ReconcilerEntriesResponse>(site, "entries", { bucket: BUCKET, keys });
    return new Map(r.entries.map((e) => [e.key, { ts: e.ts, node_id: e.node_id, deleted: e.deleted }]));
  };

  /** The value hashes a site's reconciler index holds for some keys. */
  const indexedVh = async (site: Site, keys: string[]) => {
    const r = await call<ReconcilerEntriesResponse>(site, "entries", { bucket: BUCKET, keys });
    return new Map(r.entries.map((e) => [e.key, e.vh]));
  };

  const state = async (site: Site, key: string) => {
    const m = (await versions(nc[site], BUCKET)).get(key);
    const e = await kv[site].get(key);
    return {
      version: m ? { ts: m.ts, node_id: m.node_id, deleted: m.deleted } : null,
      value: e?.operation === "PUT" ? e.string() : null,
    };
  };

  const runAt = async (site: Site, peers?: string[]) => {
    const r = await call<ReconcilerRunResponse>(site, "run", peers ? { peers } : {}, 60_000);
    return r.runs;
  };

  it("status: the index is ready and the peer is known", async () => {
    const s = await until(async () => {
      const st = await call<ReconcilerStatusResponse>("a", "status", {});
      return st.peers.includes("b") ? st : null;
    });
    assert.equal(s.site, "a");
    assert.equal(s.node_id, "site-a");
    assert.equal(typeof s.keys[BUCKET], "number");
    assert.equal(s.running, false);
  });

  it("equal sites: one root comparison, nothing moved", async () => {
    for (let i = 0; i < 40; i++) await kv.a.put(`seed.${i}`, `v${i}`);
    await kv.b.put("seed.b", "from-b");
    await kv.a.delete("seed.39");
    await until(async () => (await contents(kv.b)).size === 40 && (await contents(kv.a)).size === 40, {
      message: "seed replicated",
    });
    await quiet({ a: nc.a, b: nc.b });
    const [run] = await runAt("a", ["b"]);
    assert.ok(run);
    assert.equal(run.error, undefined);
    assert.equal(run.entries_moved, 0);
    assert.equal(run.keys_compared, 0);
    assert.equal(run.ranges_descended, 0);
    assert.ok(run.bytes > 0 && run.bytes < 2000, `bytes ${run.bytes}`);
  });

  it("differences made behind the services' back are repaired both ways, tombstones included", async () => {
    const now = Date.now() * 1000;
    const va = await versions(nc.a, BUCKET);
    const cur = (k: string): V => {
      const v = va.get(k);
      assert.ok(v, `no version of ${k} at a`);
      return { ts: v.ts, node_id: v.node_id, deleted: v.deleted };
    };
    // expected winner per key, and where it was planted
    const want = new Map<string, { v: V; value: string | null }>();
    const at = async (site: Site, key: string, v: V, value = "") => {
      await plant(site, key, v, value);
      want.set(key, { v, value: v.deleted ? null : value });
    };
    // the peer wins → pulled to a
    await at("b", "oob.only-b", { ts: now + 1, node_id: "site-b", deleted: false }, "only at b");
    await at("b", "seed.1", { ts: now + 2, node_id: "site-b", deleted: false }, "b wins");
    await at("b", "seed.2", { ts: now + 3, node_id: "site-b", deleted: true });
    const s5 = cur("seed.5");
    await at("b", "seed.5", { ...s5, deleted: true }); // same (ts, node_id): the tombstone wins
    // this site wins → pushed to b
    await at("a", "oob.only-a", { ts: now + 4, node_id: "site-a", deleted: false }, "only at a");
    await at("a", "seed.3", { ts: now + 5, node_id: "site-a", deleted: false }, "a wins");
    await at("a", "seed.4", { ts: now + 6, node_id: "site-a", deleted: true });
    const s39 = cur("seed.39"); // a tombstone at both; b gets an older put behind the back → a pushes
    await plant("b", "seed.39", { ts: s39.ts - 1, node_id: s39.node_id, deleted: false }, "stale put");
    want.set("seed.39", { v: s39, value: null });
    const keys = [...want.keys()];

    // both indexes have seen the planted versions
    for (const site of ["a", "b"] as const) {
      await until(
        async () => {
          const ix = await indexed(site, keys);
          for (const k of keys) {
            const planted =
              site === "b"
                ? ["oob.only-b", "seed.1", "seed.2", "seed.5", "seed.39"]
                : ["oob.only-a", "seed.3", "seed.4"];
            if (!planted.includes(k)) continue;
            const v = ix.get(k);
            const w =
              k === "seed.39" ? { ts: s39.ts - 1, node_id: s39.node_id, deleted: false } : want.get(k)!.v;
            if (!v || v.ts !== w.ts || v.node_id !== w.node_id || v.deleted !== w.deleted) return false;
          }
          return true;
        },
        { message: `index of ${site} shows the planted versions` },
      );
    }

    const runs = await runAt("a", ["b"]);
    assert.equal(runs.length, 1);
    const run = runs[0]!;
    assert.equal(run.error, undefined, run.error);
    assert.equal(run.peer, "b");
    assert.equal(run.bucket, BUCKET);
    assert.equal(run.entries_moved, want.size, JSON.stringify(run));
    assert.equal(run.pulled, 4);
    assert.equal(run.pushed, 4);
    assert.equal(run.skipped ?? 0, 0);
    assert.ok(
      run.keys_compared >= want.size && run.keys_compared <= 8 * 16 * 2,
      `compared ${run.keys_compared}`,
    );
    assert.ok(run.ranges_descended >= 1);

    for (const [key, w] of want) {
      for (const site of ["a", "b"] as const) {
        const s = await state(site, key);
        assert.deepEqual(s.version, w.v, `${key} version at ${site}`);
        assert.equal(s.value, w.value, `${key} value at ${site}`);
      }
    }
    assert.deepEqual(await contents(kv.a), await contents(kv.b));

    // converged: the next run compares roots only
    await until(async () => {
      const [again] = await runAt("a", ["b"]);
      return again && again.entries_moved === 0 && again.ranges_descended === 0 ? again : null;
    });
    const st = await call<ReconcilerStatusResponse>("a", "status", {});
    assert.equal(st.running, false);
    assert.ok(st.last_run && st.last_run.runs.length === 1);
  });

  it("a run from the other side repairs the same way (b pulls what a has newer)", async () => {
    const now = Date.now() * 1000;
    await plant("a", "oob.x", { ts: now + 10, node_id: "site-a", deleted: false }, "x");
    await until(async () => (await indexed("a", ["oob.x"])).get("oob.x")?.ts === now + 10);
    const [run] = await runAt("b", ["a"]);
    assert.ok(run);
    assert.equal(run.error, undefined);
    assert.equal(run.pulled, 1);
    assert.equal(run.pushed, 0);
    assert.equal((await state("b", "oob.x")).value, "x");
  });

  it("equal versions with different contents (hand-made) are moved both ways: the greater bytes win at both sites", async () => {
    const v: V = { ts: Date.now() * 1000 + 20, node_id: "hand", deleted: false };
    await plant("a", "eq.contents", v, "dark");
    await plant("b", "eq.contents", v, "light");
    const vh = (s: string) => valueHash(new TextEncoder().encode(s));
    await until(async () => (await indexedVh("a", ["eq.contents"])).get("eq.contents") === vh("dark"));
    await until(async () => (await indexedVh("b", ["eq.contents"])).get("eq.contents") === vh("light"));
    const [run] = await runAt("a", ["b"]);
    assert.ok(run);
    assert.equal(run.error, undefined, run.error);
    assert.deepEqual([run.pulled, run.pushed, run.skipped ?? 0], [1, 1, 0], JSON.stringify(run));
    for (const site of ["a", "b"] as const) {
      assert.equal((await state(site, "eq.contents")).value, "light", `value at ${site}`);
      await until(async () => (await indexedVh(site, ["eq.contents"])).get("eq.contents") === vh("light"), {
        message: `vh of "light" indexed at ${site}`,
      });
    }
    await until(async () => {
      const [again] = await runAt("a", ["b"]);
      return again && again.entries_moved === 0 && again.ranges_descended === 0 ? again : null;
    });
  });

  it("_meta written by older code (no vh): equal contents end with equal digests, other contents move", async () => {
    const now = Date.now() * 1000;
    const same: V = { ts: now + 30, node_id: "site-a", deleted: false };
    const other: V = { ts: now + 31, node_id: "site-a", deleted: false };
    // same version at both, no vh at a; at b once with the same value, once with other (greater) bytes
    await plant("a", "legacy.same", same, "v", { legacy: true });
    await plant("b", "legacy.same", same, "v");
    await plant("a", "legacy.other", other, "aaa", { legacy: true });
    await plant("b", "legacy.other", other, "zzz");
    const keys = ["legacy.same", "legacy.other"];
    await until(async () => (await indexed("a", keys)).size === 2 && (await indexed("b", keys)).size === 2);
    await until(async () => [...(await indexedVh("b", keys)).values()].every((x) => x !== undefined));
    // a lacks the hashes: it hashes its values, moves legacy.other both ways, nothing for legacy.same
    const [run] = await runAt("a", ["b"]);
    assert.ok(run);
    assert.equal(run.error, undefined, run.error);
    assert.deepEqual([run.pulled, run.pushed], [1, 1], JSON.stringify(run));
    assert.equal((await state("a", "legacy.other")).value, "zzz");
    assert.equal((await state("b", "legacy.other")).value, "zzz");
    assert.equal((await state("a", "legacy.same")).value, "v");
    // and the digests agree: the next runs compare roots only
    await until(async () => {
      const [again] = await runAt("a", ["b"]);
      return again && again.entries_moved === 0 && again.ranges_descended === 0 ? again : null;
    });
    const [fromB] = await runAt("b", ["a"]);
    assert.ok(fromB);
    assert.deepEqual([fromB.entries_moved, fromB.ranges_descended], [0, 0], JSON.stringify(fromB));
  });

  it("a peer that does not answer gets an error; the others still run", async () => {
    const runs = await runAt("a", ["nosuchsite", "b"]);
    const bad = runs.find((r) => r.peer === "nosuchsite");
    const good = runs.find((r) => r.peer === "b");
    assert.ok(bad?.error, "error recorded for the missing peer");
    assert.ok(good && good.error === undefined);
  });

  it("digest and entries refuse an unknown bucket and a too-long prefix", async () => {
    await assert.rejects(call("a", "digest", { bucket: "nope", prefixes: [] }), (err: unknown) => {
      assert.ok(err instanceof ServiceReplyError);
      assert.equal(err.status, 404);
      return true;
    });
    await assert.rejects(call("a", "digest", { bucket: BUCKET, prefixes: ["abcde"] }), (err: unknown) => {
      assert.ok(err instanceof ServiceReplyError);
      assert.equal(err.status, 400);
      return true;
    });
    const d = await call<ReconcilerDigestResponse>("a", "digest", { bucket: BUCKET, prefixes: [""] });
    assert.equal(d.depth, 4);
    assert.equal(
      d.nodes.reduce((n, x) => n + x.count, 0),
      d.root.count,
    );
  });

  it("entries pages a listing larger than the max payload", async () => {
    const big = "x".repeat(100_000);
    for (let i = 0; i < 25; i++) await kv.a.put(`big.${i}`, big);
    await until(async () => {
      const r = await call<ReconcilerEntriesResponse>("a", "entries", { bucket: BUCKET, prefixes: [""] });
      return r.entries.filter((e) => e.key.startsWith("big.")).length === 25;
    });
    const got: string[] = [];
    let after: string | undefined;
    let pages = 0;
    for (;;) {
      const r: ReconcilerEntriesResponse = await call("a", "entries", {
        bucket: BUCKET,
        prefixes: [""],
        values: true,
        ...(after ? { after } : {}),
      });
      pages++;
      for (const e of r.entries) if (e.key.startsWith("big.") && e.value === big) got.push(e.key);
      if (!r.truncated) break;
      assert.ok(r.next_after);
      after = r.next_after;
    }
    assert.ok(pages >= 3, `pages ${pages}`);
    assert.equal(new Set(got).size, 25);
  });

  /**
   * Changes behind the services' back without a `_meta` change (issue #16; DESIGN §5: anti-entropy
   * "must compare what the buckets actually hold, not only `_meta`"): the reconciler's held-value
   * index (services/reconciler/versions.ts) sees the bucket itself, so a run repairs both.
   */
  it("I1 a bucket entry removed behind the services' back (no _meta change) is restored by a run", async () => {
    await kv.a.put("oob.gone", "keep-me");
    await until(async () => (await kv.b.get("oob.gone"))?.string() === "keep-me", { message: "a→b" });
    await quiet({ a: nc.a, b: nc.b });
    const e = await kv.b.get("oob.gone");
    const jsm = await jetstreamManager(nc.b);
    await jsm.streams.deleteMessage(kvStream(BUCKET), e!.revision);
    assert.equal(await kv.b.get("oob.gone"), null, "the entry is still there");
    assert.equal(
      (await versions(nc.b, BUCKET)).get("oob.gone")?.node_id,
      "site-a",
      "_meta must be untouched",
    );
    await runAt("a", ["b"]);
    await runAt("b", ["a"]);
    await quiet({ a: nc.a, b: nc.b });
    assert.equal((await kv.b.get("oob.gone"))?.string(), "keep-me", "b's bucket lost the value for good");
  });

  it("I1 a bucket value replaced behind the services' back under the same version headers (no _meta change) is repaired by a run", async () => {
    await kv.a.put("oob.swapped", "original");
    await until(async () => (await kv.b.get("oob.swapped"))?.string() === "original", { message: "a→b" });
    await quiet({ a: nc.a, b: nc.b });
    const v = (await versions(nc.b, BUCKET)).get("oob.swapped")!;
    // e.g. an old backup restored with its headers: the version _meta holds, other bytes
    await js.b.publish(kvSubject(BUCKET, "oob.swapped"), new TextEncoder().encode("restored-junk"), {
      headers: mergerHeaders({ ...v, deleted: false }),
    });
    assert.equal((await kv.b.get("oob.swapped"))?.string(), "restored-junk");
    await quiet({ a: nc.a, b: nc.b });
    await runAt("a", ["b"]);
    await runAt("b", ["a"]);
    await quiet({ a: nc.a, b: nc.b });
    assert.equal(
      (await kv.b.get("oob.swapped"))?.string(),
      (await kv.a.get("oob.swapped"))?.string(),
      "a and b differ",
    );
  });

  it("I1 a site's _meta purged behind the services' back (nats stream purge) is rebuilt from the mesh by a run; the rebuild shows in status", async () => {
    const keys = [...[0, 1, 2, 3, 4].map((i) => `mp.a.${i}`), ...[0, 1, 2].map((i) => `mp.b.${i}`)];
    for (const k of keys) await (k.startsWith("mp.a") ? kv.a : kv.b).put(k, `v-${k}`);
    await kv.a.delete("mp.a.4");
    await until(async () => (await kv.b.get("mp.a.4"))?.operation === "DEL", { message: "a's delete at b" });
    await until(async () => (await kv.a.get("mp.b.2"))?.string() === "v-mp.b.2", { message: "b→a" });
    await quiet({ a: nc.a, b: nc.b });
    const before = await call<ReconcilerStatusResponse>("a", "status", {});
    const jsm = await jetstreamManager(nc.a);
    await jsm.streams.purge(kvStream(metaBucket(BUCKET)));
    const after = await call<ReconcilerStatusResponse>("a", "status", {});
    assert.ok(
      (after.index?.[BUCKET]?.rebuilds ?? 0) > (before.index?.[BUCKET]?.rebuilds ?? 0),
      `the rebuild is counted in status: ${JSON.stringify(after.index)}`,
    );
    await runAt("a", ["b"]);
    await runAt("b", ["a"]);
    await quiet({ a: nc.a, b: nc.b });
    for (const k of keys) assert.deepEqual(await state("a", k), await state("b", k), k);
    assert.equal((await state("a", "mp.a.4")).version?.deleted, true, "the tombstone's version is back at a");
    // and both sites go on replicating those keys both ways
    await kv.a.put("mp.b.0", "after-a");
    await kv.b.put("mp.a.0", "after-b");
    await until(async () => (await kv.b.get("mp.b.0"))?.string() === "after-a", { message: "a→b after" });
    await until(async () => (await kv.a.get("mp.a.0"))?.string() === "after-b", { message: "b→a after" });
  });
});
