/**
 * I1 extended (#12.2): anti-entropy compares what the buckets hold, not only `_meta`. Values that
 * vanish without an op — a stream purge, a removed message, a re-created bucket — are found by the
 * digest (a put whose value the bucket does not hold is indexed `lost`) and repaired from the peer
 * that holds them, at the same version; a value no site holds any more is raised (status `lost`,
 * severity error).
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { type JetStreamManager, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import {
  type DiffResult,
  Durables,
  type MergerStatusResponse,
  type ReconcilerRunResponse,
  type ReconcilerStatusResponse,
  Streams,
  run as cli,
  kvStream,
  kvSubject,
  opsSubject,
} from "../services/mod.ts";
import { call, contents, quiet, until, versions, withLinkedMesh } from "./helpers.ts";

const BUCKET = "config";
// for the services of this file's mesh: a value missing this long is indexed lost
process.env.SYNCD_RECONCILE_LOST_GRACE_MS = "300";

describe("I1 anti-entropy: what the buckets hold", () => {
  const jsm = {} as Record<string, JetStreamManager>;
  const { mesh, nc, kv } = withLinkedMesh({ serviceArgs: ["--reconcile-interval", "0"] });

  before(async () => {
    for (const s of ["a", "b"]) jsm[s] = await jetstreamManager(nc[s]!);
    for (let i = 0; i < 20; i++) await kv.a!.put(`k.${i}`, `value ${i}`);
    await until(async () => (await contents(kv.b!)).size === 20, { message: "seed replicated" });
    await quiet({ a: nc.a!, b: nc.b! });
  });

  const run = (site: string, peer: string) =>
    call<ReconcilerRunResponse>(nc[site]!, site, "reconciler", "run", { peers: [peer] });
  const status = (site: string) => call<ReconcilerStatusResponse>(nc[site]!, site, "reconciler", "status");

  /** Both sites hold the same values and the same versions. */
  const converged = async () => {
    const [ca, cb] = [await contents(kv.a!), await contents(kv.b!)];
    assert.deepEqual([...cb].sort(), [...ca].sort());
    const [va, vb] = [await versions(nc.a!), await versions(nc.b!)];
    for (const [k, v] of va) {
      assert.equal(vb.get(k)?.ts, v.ts, `version of ${k}`);
      assert.equal(vb.get(k)?.node_id, v.node_id, `version of ${k}`);
    }
  };

  it("a stream purge at one site is repaired from the other, versions unchanged", async () => {
    const before = await versions(nc.b!);
    await jsm.b!.streams.purge(kvStream(BUCKET));
    assert.equal((await contents(kv.b!)).size, 0);
    const r = await run("b", "a");
    const rec = r.runs[0]!;
    assert.equal(rec.error, undefined);
    assert.equal(rec.pulled, 20, JSON.stringify(rec));
    await converged();
    const after = await versions(nc.b!);
    for (const [k, v] of before) assert.equal(after.get(k)?.ts, v.ts, `${k} keeps its version`);
    const again = await run("b", "a");
    assert.equal(again.runs[0]!.entries_moved, 0, "nothing left to move");
  });

  it("a removed message is found from the other side's run too (pushed to it)", async () => {
    const e = await kv.b!.get("k.3");
    assert.ok(e);
    const repaired = async () =>
      (await call<MergerStatusResponse>(nc.b!, "b", "merger", "status")).counts.repaired ?? 0;
    const repairedBefore = await repaired();
    await jsm.b!.streams.deleteMessage(kvStream(BUCKET), e.revision);
    assert.equal(await kv.b!.get("k.3"), null);
    // syncd diff shows it (the digests differ although `_meta` is equal everywhere)
    const io: string[] = [];
    const code = await cli(["diff", BUCKET, "--server", mesh.sites.a!.url, "--json"], {
      out: (x) => io.push(x),
      err: (x) => io.push(x),
    });
    assert.equal(code, 0, io.join("\n"));
    const diff = JSON.parse(io.join("\n")) as DiffResult;
    assert.deepEqual(
      diff.differences.map((d) => [d.key, d.sites.b?.lost ?? false, d.sites.a?.lost ?? false]),
      [["k.3", true, false]],
    );
    const r = await run("a", "b");
    assert.equal(r.runs[0]!.error, undefined);
    // b's merger checks its bucket every 2 s and puts a vanished value back from b's own op streams:
    // when it was first, the run finds nothing to push
    const restoredLocally = (await repaired()) - repairedBefore;
    assert.equal(
      r.runs[0]!.pushed + restoredLocally,
      1,
      `${JSON.stringify(r.runs[0])}, merger repaired ${restoredLocally}`,
    );
    assert.equal((await kv.b!.get("k.3"))?.string(), "value 3");
    await converged();
  });

  it("a re-created bucket gets its values back", async () => {
    await jsm.b!.streams.delete(kvStream(BUCKET));
    await new Kvm(nc.b!).create(BUCKET, { history: 1 });
    const r = await run("b", "a");
    assert.equal(r.runs[0]!.error, undefined);
    assert.equal(r.runs[0]!.pulled, 20, JSON.stringify(r.runs[0]));
    const kb = await new Kvm(nc.b!).open(BUCKET);
    assert.equal((await contents(kb)).size, 20);
    assert.equal((await kb.get("k.7"))?.string(), "value 7");
  });

  it("a value lost everywhere is raised: status lost with severity error", async () => {
    // everywhere: its op too (each merger would put the value back from an op it still holds)
    const op = { filter: opsSubject("a", BUCKET, "k.9") };
    await jsm.a!.streams.purge(Streams.out("a"), op);
    await (await jetstreamManager(await mesh.connectHub())).streams.purge(Streams.hub, op);
    for (const s of ["a", "b"]) await jsm[s]!.streams.purge(Streams.in(s), op);
    for (const s of ["a", "b"])
      await jsm[s]!.streams.purge(kvStream(BUCKET), { filter: kvSubject(BUCKET, "k.9") });
    await run("a", "b");
    const st = await until(async () => {
      await run("a", "b");
      const s = await status("a");
      return (s.lost?.[BUCKET] ?? 0) > 0 ? s : null;
    });
    assert.equal(st.lost?.[BUCKET], 1);
    assert.equal(st.severity, "error");
    // written again, it is no longer lost
    await kv.a!.put("k.9", "again");
    await until(async () => (await status("a")).lost?.[BUCKET] === 0, { message: "k.9 still lost" });
  });

  it("I1 the version index catches up a few entries by message gets and many through a consumer, removed revisions skipped: every key counted, none lost, nothing re-read", async () => {
    const settle = async () => {
      await quiet({ a: nc.a!, b: nc.b! });
      const st = await status("b");
      assert.equal(st.keys[BUCKET], (await versions(nc.b!)).size, "status counts every key of _meta");
      await new Promise((r) => setTimeout(r, 600)); // past the lost grace (300 ms)
      const again = await status("b");
      assert.equal(again.lost?.[BUCKET], 0, "an entry the catch-up skipped would be indexed lost");
      return again.index?.[BUCKET];
    };
    const start = await settle();
    // a few entries (gets), a key overwritten and one deleted: their older revisions are removed
    // from the streams (history 1), so the gaps hold deleted sequences
    await kv.b!.put("gap.0", "x");
    await kv.b!.put("gap.0", "y");
    await kv.b!.put("gap.1", "z");
    await kv.b!.delete("gap.1");
    await until(async () => (await versions(nc.b!)).get("gap.1")?.deleted === true, {
      message: "gap.1 delete",
    });
    await settle();
    // many (a consumer): more than any catch-up reads by gets
    for (let i = 0; i < 30; i++) await kv.b!.put(`gap.many.${i % 20}`, `v${i}`);
    await until(async () => (await versions(nc.b!)).has("gap.many.19"), { message: "gap.many stamped" });
    const end = await settle();
    assert.deepEqual(end, start, "no rebuild or rescan: the catch-ups read exactly what was written");
    await until(async () => (await contents(kv.a!)).get("gap.0") === "y", { message: "gap.0 at a" });
  });

  it("I1 the version index catches up on demand: status shows every write at once, and its reads leave no consumer behind", async () => {
    // the index's own reads, by name (the test's helpers read through watches too)
    const consumers = async () => {
      let n = 0;
      for (const b of [BUCKET, `${BUCKET}_meta`])
        for await (const c of jsm.b!.consumers.list(kvStream(b)))
          if (c.name.startsWith(Durables.indexRead)) n++;
      return n;
    };
    for (let i = 0; i < 3; i++) {
      await kv.b!.put(`lazy.${i}`, `v${i}`);
      await until(async () => (await versions(nc.b!)).has(`lazy.${i}`), {
        message: `lazy.${i} never stamped`,
      });
      const st = await status("b");
      assert.equal(st.keys[BUCKET], (await versions(nc.b!)).size, "status counts every key of _meta");
    }
    // every catch-up's consumer is deleted once read (a watch's would stay for its 5 min inactivity)
    await until(async () => (await consumers()) === 0, {
      timeout: 10_000,
      message: "the index's reads left consumers on the bucket or _meta",
    });
  });
});
