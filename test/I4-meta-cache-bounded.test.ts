/**
 * I4 per-key monotonic and I1 convergence with a `_meta` cache far smaller than the bucket
 * (#12.5, memory): the watch-fed cache of the watcher and the merger keeps at most
 * `--meta-cache-max` keys (least recently used go first) and nothing correct rests on it — a key it
 * does not hold is read from the server, a stale entry loses its compare-and-set and is read again.
 *
 * - the cache itself on a real server: 400 keys, 16 cached, every read right, also for keys changed
 *   behind its back; its size never above the setting; two followers of one `_meta` KV handle (the
 *   watcher's and merger's cache, the reconciler's index in the agent) share one watch;
 * - the cache's compact entries (law): what goes in comes out, in least-recently-used order;
 * - a mesh whose services run with `--meta-cache-max 8`: 2 sites × 150 keys, half of them written at
 *   both sites, then "read, then overwrite" at the other site: every site holds the same versions and
 *   values, and every overwrite is stamped above the version it replaced.
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import fc from "fast-check";
import {
  CachedMetaStore,
  EntryColumns,
  type MetaEntry,
  MetaStore,
  MetaWatch,
  type Version,
  createLogger,
  isCasConflict,
} from "../services/mod.ts";
import { fcParams } from "./fc.ts";
import { contents, quiet, replicated, until, versions, withLinkedMesh, withMesh } from "./helpers.ts";

const log = createLogger({ service: "test", site: "a", instance: "t", level: "silent" });
const version = (ts: number, node = "site-x"): Version => ({ ts, node_id: node, deleted: false, rev: 1 });

describe("I4 / I1 with a bounded _meta cache", () => {
  describe("CachedMetaStore on a real server", () => {
    const m = withMesh({ sites: ["a"], services: false });
    let nc: NatsConnection;
    let kv: KV;
    before(async () => {
      nc = m.nc.a!;
      kv = await new Kvm(nc).create("cachetest_meta", { history: 1 });
    });

    it("holds at most maxEntries keys and answers every key right, also keys changed behind its back", async () => {
      const direct = new MetaStore(kv);
      const N = 400;
      for (let i = 0; i < N; i++) await direct.cas(`k${i}`, version(1000 + i), null);
      const cache = new CachedMetaStore(kv, log, { maxEntries: 16 });
      await cache.start();
      try {
        assert.ok(cache.size <= 16, `cache holds ${cache.size} keys`);
        for (let i = 0; i < N; i++) assert.equal((await cache.get(`k${i}`))?.version.ts, 1000 + i, `k${i}`);
        assert.equal(await cache.get("absent"), null);
        assert.ok(cache.size <= 16 && cache.counts.evictions > 0 && cache.counts.reads > 0);
        // through the cache: compare-and-set on what it read
        for (let i = 0; i < 40; i++) {
          const cur = await cache.get(`k${i}`);
          await cache.cas(`k${i}`, version(5000 + i), cur);
        }
        // behind its back: another writer moves k0..k39 again
        for (let i = 0; i < 40; i++) {
          const cur = await direct.get(`k${i}`);
          await direct.cas(`k${i}`, version(9000 + i, "site-y"), cur);
        }
        for (let i = 0; i < 40; i++) {
          for (;;) {
            const cur = await cache.get(`k${i}`);
            if (cur && cur.version.ts >= 9000) {
              await cache.cas(`k${i}`, version(cur.version.ts + 1), cur);
              break;
            }
            // a stale entry: its compare-and-set must fail, and the next read must be fresh
            await assert.rejects(cache.cas(`k${i}`, version(1), cur), (e: unknown) => isCasConflict(e));
          }
        }
        for (let i = 0; i < 40; i++) assert.equal((await direct.get(`k${i}`))?.version.ts, 9001 + i);
        assert.ok(cache.size <= 16, `cache holds ${cache.size} keys`);
      } finally {
        cache.stop();
      }
    });

    it("two followers of one _meta handle share one watch; each answers right; the last one out stops it", async () => {
      const jsm = await jetstreamManager(nc);
      // consumers someone is subscribed to (a stopped watch's ephemeral consumer lingers a while)
      const consumers = async () => {
        let n = 0;
        for await (const c of jsm.consumers.list("KV_cachetest_meta")) if (c.push_bound) n++;
        return n;
      };
      const base = await consumers();
      const first = new CachedMetaStore(kv, log);
      const second = new CachedMetaStore(kv, log);
      await first.start();
      const w = MetaWatch.acquire(kv, log);
      try {
        await second.start();
        assert.equal(w.users, 3);
        assert.equal(await consumers(), base + 1, "one consumer for both caches");
        await new MetaStore(kv).cas("shared.1", version(77), null);
        for (const c of [first, second])
          await until(async () => (await c.get("shared.1"))?.version.ts === 77 && c.counts.hits > 0, {
            message: "a cache missed the write",
          });
      } finally {
        first.stop();
        second.stop();
        w.release();
      }
      assert.equal(w.users, 0);
      await until(async () => (await consumers()) === base, {
        message: "the watch outlived its users",
      });
    });

    it("I4 a follower whose watch cannot start drops its use of it once, however often it leaves", async () => {
      const gone = await new Kvm(nc).create("cachegone_meta", { history: 1 });
      await (await jetstreamManager(nc)).streams.delete("KV_cachegone_meta");
      const other = MetaWatch.acquire(gone, log);
      const f = MetaWatch.follow(gone, { reset() {}, entry() {}, caughtUp() {}, ended() {} }, log);
      await assert.rejects(f.caughtUp);
      f.leave();
      f.leave();
      assert.equal(other.users, 1, "another user's hold of the watch was dropped");
      other.release();
      assert.equal(other.users, 0);
    });
  });

  it("I4 law: the compact entries give back every version as it went in, and evict the least recently used", () => {
    const versionArb = fc.record(
      {
        ts: fc.oneof(fc.nat(), fc.constant(Number.MAX_SAFE_INTEGER)),
        node_id: fc.constantFrom("site-a", "site-b", "ß"),
        deleted: fc.boolean(),
        rev: fc.nat(),
        merged: fc.boolean(),
        inc: fc.integer({ min: 0, max: 2e12 }),
        vh: fc.oneof(fc.hexaString({ minLength: 16, maxLength: 16 }), fc.constant("XYZ")),
        extra: fc.string(),
      },
      { requiredKeys: ["ts", "node_id", "deleted", "rev"] },
    );
    const opArb = fc.record({
      key: fc.constantFrom("a", "b", "c", "d", "e", "f"),
      e: fc.option(fc.record({ version: versionArb, revision: fc.nat() }), { nil: null }),
      touch: fc.boolean(),
      max: fc.integer({ min: 1, max: 6 }),
    });
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 60 }), (ops) => {
        const cols = new EntryColumns();
        const model = new Map<string, MetaEntry | null>();
        for (const { key, e, touch, max } of ops) {
          if (touch && model.has(key)) {
            cols.touch(key);
            const m = model.get(key)!;
            model.delete(key);
            model.set(key, m);
          } else {
            const copy = e && { ...e, version: { ...e.version } as Version };
            cols.set(key, copy);
            model.delete(key);
            model.set(key, e);
          }
          while (model.size > max) {
            cols.evictOldest();
            model.delete(model.keys().next().value as string);
          }
          assert.equal(cols.size, model.size);
          for (const [k, m] of model) {
            assert.deepEqual(cols.get(k), m, k);
            assert.equal(cols.revisionOf(k), m === null ? null : m.revision);
          }
        }
      }),
      fcParams({ numRuns: 300 }),
    );
  });

  describe("a mesh with --meta-cache-max 8", () => {
    const { nc, kv } = withLinkedMesh({
      sites: ["a", "b"],
      serviceArgs: ["--meta-cache-max", "8", "--reconcile-interval", "0"],
    });
    it("converges and stamps every overwrite above what it replaced", async () => {
      const N = 150;
      const writes: Promise<unknown>[] = [];
      for (let i = 0; i < N; i++) {
        writes.push(kv.a!.put(`k.${i}`, `a${i}`));
        if (i % 2 === 0) writes.push(kv.b!.put(`k.${i}`, `b${i}`));
        else writes.push(kv.b!.put(`only-b.${i}`, `b${i}`));
      }
      await Promise.all(writes);
      await quiet(nc, { timeout: 60_000 });
      const before = await versions(nc.a!);
      // read at one site, then overwrite at the other: must win everywhere (I4)
      for (let i = 0; i < N; i += 3) await (i % 2 ? kv.a! : kv.b!).put(`k.${i}`, `over${i}`);
      await quiet(nc, { timeout: 60_000 });
      await until(
        async () => {
          const [va, vb] = [await versions(nc.a!), await versions(nc.b!)];
          if (va.size !== vb.size) return false;
          for (const [k, v] of va)
            if (JSON.stringify(replicated(v)) !== JSON.stringify(replicated(vb.get(k)))) return false;
          return true;
        },
        { timeout: 30_000, message: "the sites' versions differ" },
      );
      const [ca, cb] = [await contents(kv.a!), await contents(kv.b!)];
      assert.deepEqual([...ca].sort(), [...cb].sort());
      assert.equal(ca.size, N + N / 2);
      const after = await versions(nc.a!);
      for (let i = 0; i < N; i += 3) {
        assert.equal(ca.get(`k.${i}`), `over${i}`, `k.${i}: the overwrite lost`);
        assert.ok(after.get(`k.${i}`)!.ts > before.get(`k.${i}`)!.ts, `k.${i} not stamped above`);
      }
    });
  });
});
