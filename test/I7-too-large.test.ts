/**
 * I7: a value over the bucket's max value size is refused — 413 from the merge endpoint, and from
 * the op stream dead-lettered with SYNCD_ERR_TOO_LARGE — while values that fit are applied.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import { Headers, OPS_INGRESS, ServiceReplyError, Streams } from "../services/mod.ts";
import { type Mesh, startMesh } from "./harness/mesh.ts";
import { call, until } from "./helpers.ts";

describe("I7 values over the bucket's max value size", () => {
  let mesh: Mesh;
  let nc: NatsConnection;

  before(async () => {
    mesh = await startMesh({ sites: ["a"], services: false, buckets: ["config", "small"] });
    nc = await mesh.connect("a");
    await new Kvm(nc).create("small", { history: 1, maxValueSize: 512 });
    await mesh.startServices("a");
  });
  after(async () => {
    await mesh?.stop();
  });

  it("I7 merge answers 413 for a value over the limit and applies one that fits", async () => {
    const op = { op: "put", bucket: "small", key: "big", ts: 5, node_id: "x" };
    await assert.rejects(
      call(nc, "a", "merger", "merge", { ...op, value: "x".repeat(600) }),
      (err: unknown) => {
        assert.ok(err instanceof ServiceReplyError);
        assert.equal(err.status, 413);
        assert.match(err.message, /SYNCD_ERR_TOO_LARGE/);
        return true;
      },
    );
    const ok = await call<{ result: string }>(nc, "a", "merger", "merge", { ...op, value: "x".repeat(300) });
    assert.equal(ok.result, "applied");
  });

  it("I7 an op over the limit in the stream is dead-lettered, the next one applied", async () => {
    nc.publish(
      OPS_INGRESS,
      JSON.stringify({ op: "put", bucket: "small", key: "s1", value: "y".repeat(800), ts: 9, node_id: "x" }),
    );
    nc.publish(
      OPS_INGRESS,
      JSON.stringify({ op: "put", bucket: "small", key: "s2", value: "fits", ts: 9, node_id: "x" }),
    );
    const small = await new Kvm(nc).open("small");
    await until(async () => (await small.get("s2"))?.string() === "fits", {
      message: "the op behind the big one",
    });
    assert.equal(await small.get("s1"), null);
    const jsm = await jetstreamManager(nc);
    const m = await until(async () => {
      const n = (await jsm.streams.info(Streams.dlq("a"))).state.last_seq;
      return n > 0 ? jsm.streams.getMessage(Streams.dlq("a"), { seq: n }) : null;
    });
    assert.equal(m.header.get(Headers.code), "SYNCD_ERR_TOO_LARGE");
    assert.match(m.header.get(Headers.reason), /> 512 bytes/);
  });
});
