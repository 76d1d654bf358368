/**
 * I1 across partitions (DESIGN §5): writes made while the hub is down, or while a site's own server
 * is down, reach every site after the heal through JetStream store-and-forward — with anti-entropy
 * switched off — and end with the LWW winners; the op streams then stop growing (no cycle).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import { OPS_INGRESS, Streams } from "../services/lib/subjects.ts";
import type { Mesh } from "./harness/mesh.ts";
import { contents, quiet, startLinkedMesh, until, versions } from "./helpers.ts";

const SITES = ["a", "b", "c"];

describe("I1 convergence after partitions, by store-and-forward", () => {
  let mesh: Mesh;
  let nc: Record<string, NatsConnection>;
  let kv: Record<string, KV>;

  before(async () => {
    ({ mesh, nc, kv } = await startLinkedMesh({ sites: SITES, serviceArgs: ["--reconcile-interval", "0"] }));
  });
  after(async () => {
    await mesh?.stop();
  });

  const same = async () => {
    const all = await Promise.all(SITES.map((s) => contents(kv[s]!)));
    return all.every((c) => JSON.stringify([...c].sort()) === JSON.stringify([...all[0]!].sort()))
      ? all[0]!
      : null;
  };

  it("I1 hub down: writes and deletes on every site, conflicting ones included, converge after the heal", async () => {
    await kv.a!.put("p.shared", "before");
    await kv.a!.put("p.doomed", "before");
    await until(async () => (await kv.c!.get("p.doomed"))?.string() === "before");
    await mesh.stopHub();
    for (const s of SITES) {
      for (let i = 0; i < 20; i++) await kv[s]!.put(`p.${s}.${i}`, `${s}${i}`);
      await kv[s]!.put("p.conflict", `from-${s}`);
    }
    await kv.b!.delete("p.doomed");
    // HLC: the later of two writes 50 ms apart wins, whatever the node ids
    await kv.c!.put("p.later", "earlier-c");
    await new Promise((r) => setTimeout(r, 50));
    await kv.a!.put("p.later", "later-a");
    // a hand-made op at a cut-off site travels too
    nc.c!.publish(
      OPS_INGRESS,
      JSON.stringify({
        op: "put",
        bucket: "config",
        key: "p.hand",
        value: "by-hand",
        ts: 1,
        node_id: "operator",
      }),
    );
    await mesh.startHub();
    // nats-server 2.10+ backs off its retries of the hub's sources that failed while the leaf
    // connections were still down: catch-up after a hub restart takes up to about 40 s there
    const final = await until(same, { timeout: 90_000, message: "sites did not converge after the heal" });
    for (const s of SITES) for (let i = 0; i < 20; i++) assert.equal(final.get(`p.${s}.${i}`), `${s}${i}`);
    assert.equal(final.has("p.doomed"), false, "delete lost");
    assert.equal(final.get("p.later"), "later-a", "HLC: the later write must win");
    assert.equal(final.get("p.hand"), "by-hand");
    const v = await versions(nc.a!);
    assert.equal(final.get("p.conflict"), `from-${v.get("p.conflict")!.node_id.slice(5)}`);
    for (const s of SITES)
      assert.deepEqual((await versions(nc[s]!)).get("p.conflict")?.node_id, v.get("p.conflict")?.node_id);
  });

  it("I1 a site's own server down and back: it catches up both ways", async () => {
    await mesh.stopServer("b");
    await kv.a!.put("o.from-a", "1");
    await kv.c!.delete("p.shared");
    await mesh.startServer("b");
    await kv.b!.put("o.from-b", "2");
    const final = await until(
      async () => {
        const c = await same();
        return c?.get("o.from-a") === "1" && c.get("o.from-b") === "2" && !c.has("p.shared") ? c : null;
      },
      { timeout: 90_000, message: "site b did not catch up" },
    );
    assert.ok(final);
  });

  it("no cycle: after the heal, the op count of every stream stops growing", async () => {
    await quiet(nc, { timeout: 30_000 });
    // the logs are compacted per key: count what was ever stored (last_seq)
    const count = async () =>
      Promise.all(
        SITES.flatMap((s) =>
          [Streams.out(s), Streams.in(s)].map(
            async (st) => (await (await jetstreamManager(nc[s]!)).streams.info(st)).state.last_seq,
          ),
        ),
      );
    const first = await count();
    await new Promise((r) => setTimeout(r, 2000));
    assert.deepEqual(await count(), first);
  });
});
