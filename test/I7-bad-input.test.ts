/**
 * I7 bad input (first form, DESIGN §6): a request that fails its schema gets a 400 naming the
 * field and is counted; a bad op in the stream is not applied, is dead-lettered with its reason and
 * does not block the ops behind it. The dead-letter stream keeps at most `--dlq-max-msgs` messages
 * (configured on the stream, enforced by the server). (An op stamped far ahead is not bad input but
 * a wait: test/I7-clock-far-off.test.ts.)
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { Headers, OPS_INGRESS, ServiceName, ServiceReplyError, Streams } from "../services/mod.ts";
import { call, until, withMesh } from "./helpers.ts";

const DLQ_MAX = 8;

describe("I7 bad input", () => {
  const { mesh, nc } = withMesh({ sites: ["a"], serviceArgs: ["--dlq-max-msgs", String(DLQ_MAX)] });
  let kv: KV;
  before(async () => {
    kv = await mesh.kv("a");
  });

  it("I7 a request failing its schema gets 400 naming the field, is counted, and the service keeps serving", async () => {
    const bad = { op: "put", bucket: "config", key: "k", value: "v", ts: 1.5, node_id: "x" };
    await assert.rejects(call(nc.a!, "a", "merger", "merge", bad), (err: unknown) => {
      assert.ok(err instanceof ServiceReplyError);
      assert.equal(err.status, 400);
      assert.match(err.message, /"ts"/);
      return true;
    });
    await assert.rejects(call(nc.a!, "a", "merger", "merge", { op: "put" }), /missing field/);
    const r = await nc.a!.request("syncd.a.merger.merge", new TextEncoder().encode("{nope"), {
      timeout: 5000,
    });
    assert.equal(r.headers?.get("Nats-Service-Error-Code"), "400");
    const stats = (await nc.a!.request(`$SRV.STATS.${ServiceName.merger}`, "", { timeout: 5000 })).json<{
      endpoints: { name: string; num_errors: number; num_requests: number; last_error: string }[];
    }>();
    const merge = stats.endpoints.find((e) => e.name === "merge")!;
    assert.equal(merge.num_errors, 3);
    assert.equal(merge.num_requests, 3);
    assert.match(merge.last_error, /SYNCD_ERR_/);
    const ok = await call<{ result: string }>(nc.a!, "a", "merger", "merge", { ...bad, ts: 5 });
    assert.equal(ok.result, "applied");
  });

  it("I7 bad ops in the stream are dead-lettered with their reason and do not block good ones", async () => {
    const bads = [
      "not json at all",
      JSON.stringify({ op: "put", bucket: "config", key: "k1", value: "v", ts: 1 }),
      JSON.stringify({ op: "put", bucket: "nope", key: "k1", value: "v", ts: 1, node_id: "x" }),
      JSON.stringify({ op: "put", bucket: "config", key: "a..b", value: "v", ts: 1, node_id: "x" }),
    ];
    for (const b of bads) nc.a!.publish(OPS_INGRESS, b);
    nc.a!.publish(
      OPS_INGRESS,
      JSON.stringify({ op: "put", bucket: "config", key: "after.bad", value: "fine", ts: 10, node_id: "x" }),
    );
    await until(async () => (await kv.get("after.bad"))?.string() === "fine", {
      message: "good op behind bad ones",
    });
    const jsm = await jetstreamManager(nc.a!);
    await until(async () => (await jsm.streams.info(Streams.dlq("a"))).state.messages === bads.length, {
      message: "dead letters",
    });
    const reasons: string[] = [];
    for (let seq = 1; seq <= bads.length; seq++) {
      const m = await jsm.streams.getMessage(Streams.dlq("a"), { seq });
      reasons.push(`${m?.header.get(Headers.code)} ${m?.header.get(Headers.reason)}`);
    }
    assert.match(reasons[0]!, /SYNCD_ERR_NOT_JSON/);
    assert.match(reasons[1]!, /SYNCD_ERR_SCHEMA .*node_id/);
    assert.match(reasons[2]!, /SYNCD_ERR_UNKNOWN_BUCKET/);
    assert.match(reasons[3]!, /SYNCD_ERR_SCHEMA .*key/);
    const st = await call<{ counts: Record<string, number> }>(nc.a!, "a", "merger", "status");
    assert.equal(st.counts.dead_lettered, bads.length);
  });

  it(`I7 the dead-letter stream is bounded: max_msgs ${DLQ_MAX} configured, older dead letters dropped by the server`, async () => {
    const jsm = await jetstreamManager(nc.a!);
    const info = await jsm.streams.info(Streams.dlq("a"));
    assert.equal(info.config.max_msgs, DLQ_MAX);
    const st0 = await call<{ counts: Record<string, number> }>(nc.a!, "a", "merger", "status");
    const N = 3 * DLQ_MAX;
    for (let i = 0; i < N; i++) nc.a!.publish(OPS_INGRESS, `garbage ${i}`);
    await nc.a!.flush();
    await until(
      async () =>
        (await call<{ counts: Record<string, number> }>(nc.a!, "a", "merger", "status")).counts
          .dead_lettered ===
        (st0.counts.dead_lettered ?? 0) + N,
      { message: "not every bad op was dead-lettered" },
    );
    const after = (await jsm.streams.info(Streams.dlq("a"))).state;
    assert.equal(after.messages, DLQ_MAX);
    assert.equal(after.last_seq - after.first_seq + 1, DLQ_MAX);
    const last = await jsm.streams.getMessage(Streams.dlq("a"), { seq: after.last_seq });
    assert.equal(
      new TextDecoder().decode(last!.data),
      `garbage ${N - 1}`,
      "the newest dead letters are kept",
    );
  });
});
