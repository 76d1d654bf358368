/**
 * I7: a value over the bucket's max value size is refused — 413 from the merge endpoint, and from
 * the op stream dead-lettered with SYNCD_ERR_TOO_LARGE — while values that fit are applied.
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import {
  type Condition,
  Conditions,
  Headers,
  OPS_INGRESS,
  ServiceReplyError,
  Streams,
  mergerHeaderBytes,
  run,
} from "../services/mod.ts";
import { call, until, withMesh } from "./helpers.ts";

describe("I7 values over the bucket's max value size", () => {
  const { mesh, nc } = withMesh({ sites: ["a"], services: false, buckets: ["config", "small"] });
  before(async () => {
    await new Kvm(nc.a!).create("small", { history: 1, maxValueSize: 512 });
    await mesh.startServices("a");
  });

  it("I7 merge answers 413 for a value over the limit and applies one that fits", async () => {
    const op = { op: "put", bucket: "small", key: "big", ts: 5, node_id: "x" };
    await assert.rejects(
      call(nc.a!, "a", "merger", "merge", { ...op, value: "x".repeat(600) }),
      (err: unknown) => {
        assert.ok(err instanceof ServiceReplyError);
        assert.equal(err.status, 413);
        assert.match(err.message, /SYNCD_ERR_TOO_LARGE/);
        return true;
      },
    );
    const ok = await call<{ result: string }>(nc.a!, "a", "merger", "merge", {
      ...op,
      value: "x".repeat(300),
    });
    assert.equal(ok.result, "applied");
  });

  it("I7 the limit counts the headers a merger's write really carries: the largest value that fits is applied", async () => {
    const op = { op: "put", bucket: "small", ts: 6, node_id: "x" };
    const fits = 512 - mergerHeaderBytes({ ...op, deleted: false });
    const ok = await call<{ result: string }>(nc.a!, "a", "merger", "merge", {
      ...op,
      key: "edge",
      value: "e".repeat(fits),
    });
    assert.equal(ok.result, "applied");
    const edge = await (await new Kvm(nc.a!).open("small")).get("edge");
    assert.equal(edge?.value.length, fits);
    await assert.rejects(
      call(nc.a!, "a", "merger", "merge", { ...op, key: "edge2", value: "e".repeat(fits + 1) }),
      (err: unknown) => err instanceof ServiceReplyError && err.status === 413,
      "one byte more: 413",
    );
  });

  it("I7 an op over the limit in the stream is dead-lettered, the next one applied", async () => {
    nc.a!.publish(
      OPS_INGRESS,
      JSON.stringify({ op: "put", bucket: "small", key: "s1", value: "y".repeat(800), ts: 9, node_id: "x" }),
    );
    nc.a!.publish(
      OPS_INGRESS,
      JSON.stringify({ op: "put", bucket: "small", key: "s2", value: "fits", ts: 9, node_id: "x" }),
    );
    const small = await new Kvm(nc.a!).open("small");
    await until(async () => (await small.get("s2"))?.string() === "fits", {
      message: "the op behind the big one",
    });
    assert.equal(await small.get("s1"), null);
    const jsm = await jetstreamManager(nc.a!);
    const m = await until(async () => {
      const n = (await jsm.streams.info(Streams.dlq("a"))).state.last_seq;
      return n > 0 ? jsm.streams.getMessage(Streams.dlq("a"), { seq: n }) : null;
    });
    assert.equal(m.header.get(Headers.code), "SYNCD_ERR_TOO_LARGE");
    assert.match(m.header.get(Headers.reason), /> 512 bytes/);
    // #12.6: raised by the merger as VALUE_TOO_LARGE (error): `syncd status --check` fails
    const out: string[] = [];
    const code = await run(
      ["status", "--check", "--json", "--server", mesh.sites.a!.url],
      { out: (s) => void out.push(s), err: (s) => void out.push(s) },
      {},
    );
    assert.equal(code, 1, out.join("\n"));
    const conds = (
      JSON.parse(out.join("\n")) as { sites: { conditions: (Condition & { service: string })[] }[] }
    ).sites.flatMap((x) => x.conditions);
    const c = conds.find((x) => x.code === Conditions.valueTooLarge && x.subject === "small/s1");
    assert.equal(c?.severity, "error", JSON.stringify(conds));
    assert.equal(c?.service, "syncd-merger");
    // a later op of the key that fits clears it
    nc.a!.publish(
      OPS_INGRESS,
      JSON.stringify({ op: "put", bucket: "small", key: "s1", value: "fits", ts: 10, node_id: "x" }),
    );
    await until(async () => (await small.get("s1"))?.string() === "fits");
    const after = await call<{ conditions: Condition[] }>(nc.a!, "a", "merger", "status");
    assert.ok(!after.conditions.some((x) => x.code === Conditions.valueTooLarge), JSON.stringify(after));
  });
});
