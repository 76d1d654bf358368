/**
 * I1 convergence (DESIGN §4), on a real hub + two leaf sites with all four services: local writes
 * from any client, concurrent writes, tombstones and hand-made ops all end with the same LWW winner
 * at every site.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { OPS_INGRESS, type Op, Streams, compareVersions } from "../services/mod.ts";
import { contents, quiet, streamCount, until, versions, withLinkedMesh } from "./helpers.ts";
import { publishedOps } from "./workload.ts";

describe("I1 convergence between two leaf sites", () => {
  const { nc, kv } = withLinkedMesh({ sites: ["a", "b"] });

  const valueAt = async (site: string, key: string) => {
    const e = await kv[site]!.get(key);
    return e?.operation === "PUT" ? e.string() : null;
  };

  it("I1 a local put on one site appears on the other (any KV client)", async () => {
    await kv.a!.put("app.theme", "dark");
    await until(async () => (await valueAt("b", "app.theme")) === "dark", { message: "put a→b" });
    await kv.b!.put("app.lang", "es");
    await until(async () => (await valueAt("a", "app.lang")) === "es", { message: "put b→a" });
  });

  it("I1 a binary value arrives byte for byte", async () => {
    const bytes = new Uint8Array([0xff, 0x00, 0x80, 0x7f]);
    await kv.a!.put("bin", bytes);
    const got = await until(async () => (await kv.b!.get("bin"))?.value, { message: "binary a→b" });
    assert.deepEqual(got, bytes);
  });

  it("I1 a delete is replicated as a tombstone", async () => {
    await kv.a!.put("gone", "soon");
    await until(async () => (await valueAt("b", "gone")) === "soon");
    await kv.b!.delete("gone");
    await until(async () => (await valueAt("a", "gone")) === null, { message: "delete b→a" });
    const va = (await versions(nc.a!)).get("gone");
    assert.equal(va?.deleted, true);
    assert.equal(va?.node_id, "site-b");
  });

  it("I1 concurrent writes of the same keys on both sites: both sites hold the greater of the two published versions", async (t) => {
    const keys = Array.from({ length: 30 }, (_, i) => `race.${i}`);
    await Promise.all(keys.flatMap((k) => [kv.a!.put(k, `from-a-${k}`), kv.b!.put(k, `from-b-${k}`)]));
    await quiet(nc);
    const [ca, cb] = [await contents(kv.a!), await contents(kv.b!)];
    const [va, vb] = [await versions(nc.a!), await versions(nc.b!)];
    // the two versions each key was published with (both writes are stamped: neither replaced the
    // other before it was stamped), and the greater one by the rule written out here, not lww.ts's
    const published = await publishedOps(nc);
    let aWon = 0;
    for (const k of keys) {
      const mine = published.filter((p) => p.op.key === k);
      assert.deepEqual(mine.map((p) => p.site).sort(), ["a", "b"], `${k}: published ${JSON.stringify(mine)}`);
      const [x, y] = mine.map((p) => p.op) as [Op, Op];
      const greater = x.ts !== y.ts ? (x.ts > y.ts ? x : y) : x.node_id > y.node_id ? x : y;
      if (greater.node_id === "site-a") aWon++;
      for (const [site, v, c] of [["a", va, ca] as const, ["b", vb, cb] as const]) {
        assert.deepEqual(
          { ts: v.get(k)?.ts, node_id: v.get(k)?.node_id },
          { ts: greater.ts, node_id: greater.node_id },
          `${k} at ${site}: not the greater of ${JSON.stringify([x, y])}`,
        );
        assert.equal(
          c.get(k),
          `from-${greater.node_id.slice(5)}-${k}`,
          `${k} at ${site}: not the winner's value`,
        );
      }
    }
    t.diagnostic(`site-a's write won ${aWon} of ${keys.length} keys`);
  });

  it("I1 an older put arriving after a delete does not bring the key back", async () => {
    await kv.a!.put("tomb", "v1");
    await until(async () => (await valueAt("b", "tomb")) === "v1");
    await kv.b!.delete("tomb");
    await until(async () => (await valueAt("a", "tomb")) === null);
    const tomb = (await versions(nc.a!)).get("tomb")!;
    // a stale put (one tick older than the tombstone), by hand at site a
    const stale = {
      op: "put",
      bucket: "config",
      key: "tomb",
      value: "zombie",
      ts: tomb.ts - 1,
      node_id: "site-z",
    };
    nc.a!.publish(OPS_INGRESS, JSON.stringify(stale));
    await nc.a!.flush();
    await quiet(nc);
    assert.equal(await valueAt("a", "tomb"), null);
    assert.equal(await valueAt("b", "tomb"), null);
    assert.equal((await versions(nc.b!)).get("tomb")?.deleted, true);
  });

  it("I1 a hand-made op on rep.kv.ops at any site is merged everywhere by the same rule", async () => {
    const ts = Date.now() * 1000 + 999;
    nc.b!.publish(
      OPS_INGRESS,
      JSON.stringify({
        op: "put",
        bucket: "config",
        key: "hand.made",
        value: "yes",
        ts,
        node_id: "operator",
      }),
    );
    await until(async () => (await valueAt("a", "hand.made")) === "yes", { message: "hand-made op b→a" });
    assert.equal(await valueAt("b", "hand.made"), "yes");
    await quiet(nc);
    const before = [await versions(nc.a!), await versions(nc.b!)].map((v) => v.get("hand.made"));
    const conflictsBefore = await streamCount(await jetstreamManager(nc.a!), Streams.conflicts("a"));
    // a hand-made op that loses (lower ts, greater node id) changes nothing, at either site
    nc.a!.publish(
      OPS_INGRESS,
      JSON.stringify({
        op: "put",
        bucket: "config",
        key: "hand.made",
        value: "no",
        ts: ts - 1,
        node_id: "zzz",
      }),
    );
    await nc.a!.flush();
    // it was handled (a's merger records it as a lost op), then both sites are quiet
    await until(
      async () =>
        (await streamCount(await jetstreamManager(nc.a!), Streams.conflicts("a"))) > conflictsBefore,
      { message: "the losing op was never merged at a" },
    );
    await quiet(nc);
    for (const [i, site] of ["a", "b"].entries()) {
      assert.equal(await valueAt(site, "hand.made"), "yes", `the losing op changed the value at ${site}`);
      assert.deepEqual(
        (await versions(nc[site]!)).get("hand.made"),
        before[i],
        `the losing op changed _meta at ${site}`,
      );
    }
    // and a hand-made delete that wins removes it everywhere
    nc.a!.publish(
      OPS_INGRESS,
      JSON.stringify({ op: "delete", bucket: "config", key: "hand.made", ts: ts + 1, node_id: "operator" }),
    );
    await until(async () => (await valueAt("b", "hand.made")) === null, { message: "hand-made delete a→b" });
    await quiet(nc);
    assert.equal(await valueAt("a", "hand.made"), null);
    const v = (await versions(nc.a!)).get("hand.made")!;
    assert.equal(compareVersions(v, { ts: ts + 1, node_id: "operator" }), 0);
  });
});
