/**
 * I1 extended (#12.5): tombstones are collected — their `_meta` entry and the bucket's delete marker
 * removed without a new op — only once every current member site has applied them (and every op
 * older than them) and they are older than the minimum age. A site offline while a key is deleted
 * blocks collection until it is back and has applied the delete; once collected, its stale state
 * does not bring the key back (anti-entropy included). A removed site no longer blocks collection.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import {
  type ReconcilerStatusResponse,
  Streams,
  run as cli,
  kvStream,
  kvSubject,
  metaBucket,
  opsSubject,
} from "../services/mod.ts";
import { call, contents, until, versions, withLinkedMesh } from "./helpers.ts";

const SITES = ["a", "b", "c"];
const MIN_AGE_MS = 1500;
// for the services of this file's mesh
process.env.SYNCD_TOMBSTONE_MIN_AGE_MS = String(MIN_AGE_MS);
process.env.SYNCD_TOMBSTONE_GC_MS = "300";

describe("I1 tombstone collection: every member applied it, old enough; no resurrection", () => {
  const { mesh, nc } = withLinkedMesh({ sites: SITES, serviceArgs: ["--reconcile-interval", "0"] });

  const status = (site: string) => call<ReconcilerStatusResponse>(nc[site]!, site, "reconciler", "status");
  /** What a site stores for a key: its `_meta` entry (if any) and its bucket's last message (if any). */
  const stored = async (site: string, key: string) => {
    const jsm = await jetstreamManager(nc[site]!);
    const last = async (stream: string, subj: string) => {
      try {
        return await jsm.streams.getMessage(stream, { last_by_subj: subj });
      } catch {
        return null;
      }
    };
    return {
      meta: await last(kvStream(metaBucket("config")), kvSubject(metaBucket("config"), key)),
      data: await last(kvStream("config"), kvSubject("config", key)),
    };
  };
  const collected = async (site: string, key: string) => {
    const s = await stored(site, key);
    return s.meta === null && s.data === null;
  };
  const allMembers = (sites: string[]) =>
    until(
      async () => {
        for (const s of sites) {
          const st = await status(s);
          if (st.membership?.state !== "member" || st.peers.length !== sites.length - 1) return false;
        }
        return true;
      },
      { timeout: 30_000, message: "the sites never all became members" },
    );

  it("collection waits for a member that is offline; once it is back and has applied the delete, the tombstone goes everywhere and stays gone", async () => {
    await allMembers(SITES);
    const a = await mesh.kv("a");
    await a.put("k1", "v1");
    await until(async () => (await contents(await mesh.kv("c"))).get("k1") === "v1", {
      message: "k1 never reached c",
    });
    await mesh.stopServices("c");
    await a.delete("k1");
    await until(async () => (await versions(nc.b!)).get("k1")?.deleted === true, {
      message: "the delete never reached b",
    });
    // old enough, applied by a and b: still blocked by c, which has not applied it
    await until(async () => (await status("a")).tombstones?.config?.blocked === 1, {
      timeout: 20_000,
      message: "a never counted the tombstone as blocked",
    });
    // the others' marks move past the delete; c's cannot
    await until(async () => JSON.stringify((await status("a")).gc_blocked_by) === '["c"]', {
      timeout: 20_000,
      message: "a never named c alone as what collection waits for",
    });
    const io = { out: [] as string[], err: [] as string[] };
    const sink = { out: (s: string) => io.out.push(s), err: (s: string) => io.err.push(s) };
    await cli(["status", "--server", mesh.sites.a!.url], sink);
    assert.match(io.out.join("\n"), /TOMBSTONES BLOCKED\/COLLECTIBLE/);
    assert.match(io.out.join("\n"), /1\/0 \(c\)/, io.out.join("\n"));
    await new Promise((r) => setTimeout(r, 2 * MIN_AGE_MS));
    for (const s of ["a", "b"]) {
      const st = await stored(s, "k1");
      assert.ok(st.meta, `${s} collected the tombstone while c had not applied it`);
      assert.ok(st.data, `${s} removed the delete marker while c had not applied it`);
    }
    // c still holds its stale value
    assert.equal((await contents(await mesh.kv("c"))).get("k1"), "v1");

    const opOf = async () =>
      (await jetstreamManager(nc.a!)).streams.getMessage(Streams.out("a"), {
        last_by_subj: opsSubject("a", "config", "k1"),
      });
    const deleteOp = await opOf();
    assert.ok(deleteOp, "a's op log has no op of k1");
    await mesh.startServices("c");
    for (const s of SITES)
      await until(() => collected(s, "k1"), {
        timeout: 30_000,
        message: `${s} never collected the tombstone of k1:\n${mesh.logs(s, 30)}`,
      });
    const st = await status("a");
    assert.equal(st.tombstones?.config?.total, 0);
    // collected without a new op: a's op log still ends with the delete
    assert.equal((await opOf())?.seq, deleteOp?.seq, "collecting the tombstone published an op");
    // anti-entropy between every pair: nothing brings k1 back
    for (const s of SITES) await call(nc[s]!, s, "reconciler", "run", {});
    for (const s of SITES) {
      assert.equal((await contents(await mesh.kv(s))).has("k1"), false, `k1 came back at ${s}`);
      assert.equal((await versions(nc[s]!)).has("k1"), false, `k1's version came back at ${s}`);
    }
  });

  it("a partition: an older write made at a cut-off site and a delete made elsewhere; after the heal the delete wins and is collected, nothing comes back", async () => {
    const a = await mesh.kv("a");
    const c = await mesh.kv("c");
    await a.put("k3", "v0");
    await until(async () => (await contents(c)).get("k3") === "v0", { message: "k3 never reached c" });
    await mesh.stopHub();
    await c.put("k3", "stale");
    // stamped at c (its version is older than the delete made after it at a)
    await until(async () => (await versions(nc.c!)).get("k3")?.node_id === mesh.sites.c!.nodeId, {
      message: "c never stamped its write of k3",
    });
    await new Promise((r) => setTimeout(r, 20));
    await a.delete("k3");
    await new Promise((r) => setTimeout(r, 2 * MIN_AGE_MS));
    assert.ok((await stored("a", "k3")).meta, "a collected the tombstone while cut off from the others");
    await mesh.startHub();
    for (const s of SITES)
      await until(() => collected(s, "k3"), {
        timeout: 60_000,
        message: `${s} never collected the tombstone of k3:\n${mesh.logs(s, 30)}`,
      });
    for (const s of SITES) await call(nc[s]!, s, "reconciler", "run", {});
    for (const s of SITES) {
      assert.equal((await contents(await mesh.kv(s))).has("k3"), false, `k3 came back at ${s}`);
      assert.equal((await versions(nc[s]!)).has("k3"), false, `k3's version came back at ${s}`);
    }
  });

  it("a removed site no longer blocks collection", async () => {
    const a = await mesh.kv("a");
    await a.put("k2", "v2");
    await until(async () => (await contents(await mesh.kv("c"))).get("k2") === "v2", {
      message: "k2 never reached c",
    });
    await mesh.stopServices("c");
    await a.delete("k2");
    await until(async () => (await status("a")).tombstones?.config?.blocked === 1, {
      timeout: 20_000,
      message: "a never counted the tombstone of k2 as blocked",
    });
    const server = ["--server", mesh.sites.a!.url];
    const io = { out: [] as string[], err: [] as string[] };
    const sink = { out: (s: string) => io.out.push(s), err: (s: string) => io.err.push(s) };
    assert.equal(await cli(["site", "remove", "c", ...server], sink), 0, io.err.join("\n"));
    for (const s of ["a", "b"])
      await until(() => collected(s, "k2"), {
        timeout: 30_000,
        message: `${s} never collected the tombstone of k2 after c was removed`,
      });
    // the removed site is forgotten: no peer, no mark that blocks
    for (const s of ["a", "b"]) {
      const st = await until(async () => {
        const r = await status(s);
        return r.peers.includes("c") ? null : r;
      });
      assert.ok(!(st.gc_blocked_by ?? []).includes("c"), `${s} still waits for c`);
    }
  });
});
