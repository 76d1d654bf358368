/**
 * I6 for the `merge` endpoint of the real merger (services/merger/service.ts): a request whose
 * apply fails after the endpoint journaled the op (here: `_meta` refuses new keys, so the commit
 * fails with a server error; a `kill -9` at that moment leaves the same state) is applied again by
 * the merger's durable consumer from the journal once `_meta` accepts writes again — nobody resends
 * it. README "What happens when…": "A `merge` request killed half-way: the op was journaled to the
 * site's IN stream first and is applied again."
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { type JetStreamManager, jetstreamManager } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { ServiceReplyError, kvStream, metaBucket } from "../services/mod.ts";
import { call, until, versions, withMesh } from "./helpers.ts";

describe("I6 the merge endpoint's journal", () => {
  const { mesh, nc } = withMesh({ sites: ["a"], serviceArgs: ["--reconcile-interval", "0"] });
  let kv: KV;
  let jsm: JetStreamManager;
  before(async () => {
    kv = await mesh.kv("a");
    jsm = await jetstreamManager(nc.a!);
  });

  it("I6 a merge whose apply fails after the journal publish is applied by the consumer, without a resend", async () => {
    const ts = Date.now() * 1000;
    const op = { op: "put", bucket: "config", key: "journal.k", value: "journaled", ts, node_id: "site-j" };
    const merged = await call<{ result: string }>(nc.a!, "a", "merger", "merge", {
      ...op,
      key: "journal.warm",
    });
    assert.equal(merged.result, "applied");
    // _meta refuses any new key from now on
    const stream = kvStream(metaBucket("config"));
    const cfg = (await jsm.streams.info(stream)).config;
    const held = (await jsm.streams.info(stream)).state.messages;
    await jsm.streams.update(stream, { ...cfg, max_msgs: held, discard: "new" as typeof cfg.discard });
    try {
      await assert.rejects(call(nc.a!, "a", "merger", "merge", op), (err: unknown) => {
        assert.ok(err instanceof ServiceReplyError, String(err));
        assert.ok(err.status >= 500, `status ${err.status}: ${err.message}`);
        return true;
      });
      assert.equal(await kv.get("journal.k"), null, "applied although _meta refused it");
    } finally {
      await jsm.streams.update(stream, cfg);
    }
    // nobody sends the op again: the consumer's delivery of the journaled copy applies it
    await until(async () => (await kv.get("journal.k"))?.string() === "journaled", {
      timeout: 30_000,
      message: "the journaled op was never applied",
    });
    const v = (await versions(nc.a!)).get("journal.k");
    assert.deepEqual([v?.ts, v?.node_id], [ts, "site-j"]);
  });
});
