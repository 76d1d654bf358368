/**
 * The conflict log: when an op loses, or replaces another node's value, the losing value and both
 * versions are kept on the site's conflict stream, so nothing a user wrote is silently lost. The
 * stream is bounded: `--conflicts-max-msgs` and `--conflicts-max-age` are its limits, and the server
 * drops the oldest records beyond them.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/nats-core";
import { type Conflict, OPS_INGRESS, Streams } from "../services/mod.ts";
import { until, withMesh } from "./helpers.ts";

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

const MAX = 5;

describe("conflict log", () => {
  const { mesh, nc } = withMesh({
    sites: ["a"],
    serviceArgs: ["--conflicts-max-msgs", String(MAX), "--conflicts-max-age", "3600"],
  });

  it("a losing op and an overwritten value are recorded with both versions", async () => {
    const kv = await mesh.kv("a");
    const base = Date.now() * 1000;
    const put = (value: string, ts: number, node_id: string) =>
      nc.a!.publish(
        OPS_INGRESS,
        JSON.stringify({ op: "put", bucket: "config", key: "c.k", value, ts, node_id }),
      );
    put("first", base, "site-x");
    await until(async () => (await kv.get("c.k"))?.string() === "first");
    put("second", base + 10, "site-y"); // replaces site-x's value: overwritten
    await until(async () => (await kv.get("c.k"))?.string() === "second");
    put("late", base + 5, "site-z"); // loses to site-y: stale_op
    const got = await until(async () => {
      const c = (await conflicts(nc.a!, "a")).filter((r) => r.key === "c.k");
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

  it(`the conflict stream is bounded: max_msgs ${MAX} and max_age 1 h configured, the oldest records dropped`, async () => {
    const jsm = await jetstreamManager(nc.a!);
    const cfg = (await jsm.streams.info(Streams.conflicts("a"))).config;
    assert.equal(cfg.max_msgs, MAX);
    assert.equal(cfg.max_age, 3600 * 1_000_000_000);
    const kv = await mesh.kv("a");
    const base = Date.now() * 1000;
    const op = (value: string, ts: number, node_id = "site-l") =>
      JSON.stringify({ op: "put", bucket: "config", key: "c.bound", value, ts, node_id });
    nc.a!.publish(OPS_INGRESS, op("winner", base + 1000, "site-w"));
    await until(async () => (await kv.get("c.bound"))?.string() === "winner");
    const N = 3 * MAX;
    for (let i = 0; i < N; i++) nc.a!.publish(OPS_INGRESS, op(`loser-${i}`, base + i)); // each one loses
    await nc.a!.flush();
    await until(
      async () =>
        (await conflicts(nc.a!, "a")).some((c) => c.key === "c.bound" && c.loser.value === `loser-${N - 1}`),
      { message: "the last losing op was not recorded" },
    );
    const st = (await jsm.streams.info(Streams.conflicts("a"))).state;
    assert.equal(st.messages, MAX);
    assert.ok(st.last_seq >= N, `only ${st.last_seq} records were ever written`);
  });
});
