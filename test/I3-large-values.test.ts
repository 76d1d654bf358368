/**
 * I3 no lost write, for any value the bucket accepts (issue #12 point 1): a 900 KB random binary
 * value and a 1 000 000-byte text value replicate on servers with the default 1 MB max_payload
 * (the op travels in the split form: `Syncd-Op` header + raw value payload); hand-made ops in both
 * forms are applied and forwarded; a local write whose op cannot fit in one message next to its
 * headers is dead-lettered with SYNCD_ERR_TOO_LARGE and counted — never retried in silence — and
 * the writes behind it still replicate.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/nats-core";
import { Headers, OPS_INGRESS, Streams, encodeOpMessage, endpointSubject, makeOp } from "../services/mod.ts";
import { call, plantVersion, until, withLinkedMesh } from "./helpers.ts";

const ONE_MB = 1024 * 1024;

type WatcherStatus = { buckets: { bucket: string; counts: Record<string, number> }[]; last_error?: string };

describe("I3 large values", () => {
  const m = withLinkedMesh({ sites: ["a", "b"], serviceArgs: ["--reconcile-interval", "0"] });

  before(() => {
    // the limit these cases are about: nats-server's default max_payload, announced to clients
    assert.equal(m.nc.a!.info?.max_payload, ONE_MB);
    assert.equal(m.nc.b!.info?.max_payload, ONE_MB);
  });

  const bytesAt = async (site: string, key: string) => (await m.kv[site]!.get(key))?.value;

  it("I3 a 900 KB random binary value written at a reaches b byte for byte", async () => {
    const bin = new Uint8Array(randomBytes(900 * 1024));
    await m.kv.a!.put("blob", bin);
    const got = await until(async () => bytesAt("b", "blob"), { timeout: 30_000, message: "blob at b" });
    assert.equal(Buffer.compare(Buffer.from(got), Buffer.from(bin)), 0);
  });

  it("I3 a 1 000 000-byte text value written at b reaches a", async () => {
    const text = "t".repeat(999_990) + "0123456789";
    assert.equal(text.length, 1_000_000);
    await m.kv.b!.put("big.text", text);
    const got = await until(async () => (await m.kv.a!.get("big.text"))?.string(), {
      timeout: 30_000,
      message: "big.text at a",
    });
    assert.equal(got, text);
  });

  it("I3 hand-made ops on rep.kv.ops: the split form and a 600 KB JSON op are applied at both sites", async () => {
    const raw = new Uint8Array(randomBytes(700 * 1024));
    const h = natsHeaders();
    h.set(
      Headers.op,
      JSON.stringify({ op: "put", bucket: "config", key: "hand.split", ts: 11, node_id: "x" }),
    );
    m.nc.a!.publish(OPS_INGRESS, raw, { headers: h });
    const text = "j".repeat(600 * 1024);
    m.nc.b!.publish(
      OPS_INGRESS,
      JSON.stringify({ op: "put", bucket: "config", key: "hand.json", value: text, ts: 11, node_id: "x" }),
    );
    for (const site of ["a", "b"]) {
      const got = await until(async () => bytesAt(site, "hand.split"), { timeout: 30_000 });
      assert.equal(Buffer.compare(Buffer.from(got), Buffer.from(raw)), 0, `hand.split at ${site}`);
      const t = await until(async () => (await m.kv[site]!.get("hand.json"))?.string(), { timeout: 30_000 });
      assert.equal(t, text, `hand.json at ${site}`);
    }
  });

  it("I3 the merge endpoint takes the split form: a 900 KB binary op is applied", async () => {
    const raw = new Uint8Array(randomBytes(900 * 1024));
    const { data, headers } = encodeOpMessage(
      makeOp({ bucket: "config", key: "merged.blob", ts: 12, nodeId: "x", deleted: false, value: raw }),
    );
    const r = await m.nc.b!.request(endpointSubject("b", "merger", "merge"), data, {
      headers: headers!,
      timeout: 10_000,
    });
    assert.equal(r.headers?.get("Nats-Service-Error-Code") ?? "", "", r.headers?.get("Nats-Service-Error"));
    assert.equal(r.json<{ result: string }>().result, "applied");
    const got = await bytesAt("b", "merged.blob");
    assert.equal(Buffer.compare(Buffer.from(got!), Buffer.from(raw)), 0);
  });

  it("I1 anti-entropy pushes a 900 KB binary value the op stream never carried", async () => {
    const raw = new Uint8Array(randomBytes(900 * 1024));
    // a version only a's stores know (as if its op was lost): only anti-entropy can move it
    await plantVersion(m.nc.a!, { key: "ae.blob", ts: Date.now() * 1000, node_id: "site-a", value: raw });
    const run = await call<{ runs: { pushed: number; error?: string }[] }>(
      m.nc.a!,
      "a",
      "reconciler",
      "run",
      {
        peers: ["b"],
      },
    );
    assert.ok(
      run.runs.some((r) => r.pushed >= 1 && !r.error),
      JSON.stringify(run),
    );
    const got = await until(async () => bytesAt("b", "ae.blob"), {
      timeout: 30_000,
      message: "ae.blob at b",
    });
    assert.equal(Buffer.compare(Buffer.from(got), Buffer.from(raw)), 0);
  });

  it("I3 a write too large for an op message is dead-lettered with SYNCD_ERR_TOO_LARGE, counted, and the next write replicates", async () => {
    // fits in the bucket (no headers) but not next to the op's Syncd-Op and Nats-Msg-Id headers
    const edge = new Uint8Array(randomBytes(ONE_MB - 64));
    await m.kv.a!.put("edge", edge);
    await m.kv.a!.put("after.edge", "still flows");
    await until(async () => (await m.kv.b!.get("after.edge"))?.string() === "still flows", {
      timeout: 30_000,
      message: "the write behind the too-large one",
    });
    const st = await until(
      async () => {
        const s = await call<WatcherStatus>(m.nc.a!, "a", "watcher", "status");
        return (s.buckets[0]?.counts.too_large ?? 0) > 0 ? s : null;
      },
      { message: "too_large counted in watcher status" },
    );
    assert.match(st.last_error ?? "", /SYNCD_ERR_TOO_LARGE/);
    const jsm = await jetstreamManager(m.nc.a!);
    const dlq = await until(async () => {
      const n = (await jsm.streams.info(Streams.dlq("a"))).state.last_seq;
      return n > 0 ? jsm.streams.getMessage(Streams.dlq("a"), { seq: n }) : null;
    });
    assert.equal(dlq.header.get(Headers.code), "SYNCD_ERR_TOO_LARGE");
    assert.match(dlq.header.get(Headers.reason), /max_payload/);
    assert.equal(JSON.parse(dlq.string()).key, "edge");
    assert.equal(await m.kv.b!.get("edge"), null);
    // counted once, not retried: the count stays put
    const again = await call<WatcherStatus>(m.nc.a!, "a", "watcher", "status");
    assert.equal(again.buckets[0]?.counts.too_large, 1);
  });
});
