/**
 * The conflict log: when an op loses, or replaces another node's value, the losing value and both
 * versions are kept on the site's conflict stream, so nothing a user wrote is silently lost.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/nats-core";
import type { Conflict } from "../services/lib/schemas.gen.ts";
import { OPS_INGRESS, Streams } from "../services/lib/subjects.ts";
import { type Mesh, startMesh } from "./harness/mesh.ts";
import { until } from "./helpers.ts";

async function conflicts(nc: NatsConnection, site: string): Promise<Conflict[]> {
  const jsm = await jetstreamManager(nc);
  const n = (await jsm.streams.info(Streams.conflicts(site))).state;
  const out: Conflict[] = [];
  for (let seq = n.first_seq; seq <= n.last_seq && n.messages > 0; seq++) {
    const m = await jsm.streams.getMessage(Streams.conflicts(site), { seq });
    if (m) out.push(m.json<Conflict>());
  }
  return out;
}

describe("conflict log", () => {
  let mesh: Mesh;
  let nc: NatsConnection;

  before(async () => {
    mesh = await startMesh({ sites: ["a"] });
    nc = await mesh.connect("a");
  });
  after(async () => {
    await mesh?.stop();
  });

  it("a losing op and an overwritten value are recorded with both versions", async () => {
    const kv = await mesh.kv("a");
    const base = Date.now() * 1000;
    const put = (value: string, ts: number, node_id: string) =>
      nc.publish(
        OPS_INGRESS,
        JSON.stringify({ op: "put", bucket: "config", key: "c.k", value, ts, node_id }),
      );
    put("first", base, "site-x");
    await until(async () => (await kv.get("c.k"))?.string() === "first");
    put("second", base + 10, "site-y"); // replaces site-x's value: overwritten
    await until(async () => (await kv.get("c.k"))?.string() === "second");
    put("late", base + 5, "site-z"); // loses to site-y: stale_op
    const got = await until(async () => {
      const c = (await conflicts(nc, "a")).filter((r) => r.key === "c.k");
      return c.length >= 2 ? c : null;
    });
    const over = got.find((c) => c.kind === "overwritten")!;
    assert.deepEqual(over.loser, { ts: base, node_id: "site-x", deleted: false, value: "first" });
    assert.deepEqual(over.winner, { ts: base + 10, node_id: "site-y", deleted: false, value: "second" });
    const stale = got.find((c) => c.kind === "stale_op")!;
    assert.deepEqual(stale.loser, { ts: base + 5, node_id: "site-z", deleted: false, value: "late" });
    assert.equal(stale.winner.node_id, "site-y");
    assert.equal(stale.site, "a");
    assert.equal((await kv.get("c.k"))?.string(), "second");
  });
});
