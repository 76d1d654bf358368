/**
 * I4 per-key monotonic and I1 convergence with a `_meta` cache far smaller than the bucket
 * (#12.5, memory): the watch-fed cache of the watcher and the merger keeps at most
 * `--meta-cache-max` keys (least recently used go first) and nothing correct rests on it — a key it
 * does not hold is read from the server, a stale entry loses its compare-and-set and is read again.
 *
 * - the cache itself on a real server: 400 keys, 16 cached, every read right, also for keys changed
 *   behind its back; its size never above the setting;
 * - a mesh whose services run with `--meta-cache-max 8`: 2 sites × 150 keys, half of them written at
 *   both sites, then "read, then overwrite" at the other site: every site holds the same versions and
 *   values, and every overwrite is stamped above the version it replaced.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import { CachedMetaStore, MetaStore, type Version, createLogger, isCasConflict } from "../services/mod.ts";
import { type Mesh, startMesh } from "./harness/mesh.ts";
import { contents, quiet, replicated, startLinkedMesh, until, versions } from "./helpers.ts";

const log = createLogger({ service: "test", site: "a", instance: "t", level: "silent" });
const version = (ts: number, node = "site-x"): Version => ({ ts, node_id: node, deleted: false, rev: 1 });

describe("I4 / I1 with a bounded _meta cache", () => {
  const meshes: Mesh[] = [];
  after(async () => {
    await Promise.all(meshes.map((m) => m.stop()));
  });

  describe("CachedMetaStore on a real server", () => {
    let nc: NatsConnection;
    let kv: KV;
    before(async () => {
      const mesh = await startMesh({ sites: ["a"], services: false });
      meshes.push(mesh);
      nc = await mesh.connect("a");
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
        let conflicts = 0;
        for (let i = 0; i < 40; i++) {
          for (;;) {
            const cur = await cache.get(`k${i}`);
            if (cur && cur.version.ts >= 9000) {
              await cache.cas(`k${i}`, version(cur.version.ts + 1), cur);
              break;
            }
            // a stale entry: its compare-and-set must fail, and the next read must be fresh
            await assert.rejects(cache.cas(`k${i}`, version(1), cur), (e: unknown) => isCasConflict(e));
            conflicts++;
          }
        }
        for (let i = 0; i < 40; i++) assert.equal((await direct.get(`k${i}`))?.version.ts, 9001 + i);
        assert.ok(cache.size <= 16, `cache holds ${cache.size} keys`);
      } finally {
        cache.stop();
      }
    });
  });

  describe("a mesh with --meta-cache-max 8", () => {
    it("converges and stamps every overwrite above what it replaced", async () => {
      const { mesh, nc, kv } = await startLinkedMesh({
        sites: ["a", "b"],
        serviceArgs: ["--meta-cache-max", "8", "--reconcile-interval", "0"],
      });
      meshes.push(mesh);
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
