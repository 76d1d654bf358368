/**
 * I3 for a local write the watcher has not stamped yet (its watcher is down) when a newer op of the
 * same key arrives from elsewhere: the merger must not overwrite it (it happened later, from this
 * site's point of view: it will be stamped above and win everywhere), and once the watcher is back
 * the write is published. The workload checker (test/workload.ts, `allowBeatenUnpublished`, as the
 * chaos tests use it) must report such a write as lost if it was never published: it accepts an
 * unpublished write only with the merger's record that `_meta` held the write's own stamp — never on
 * a guess from the clocks (the op here is stamped well after the write was issued).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { OPS_INGRESS, type Op } from "../services/mod.ts";
import { quiet, until, versions, withLinkedMesh } from "./helpers.ts";
import { type WriteRecord, checkOutcome, putWrite, uniqueValue } from "./workload.ts";

describe("I3 a local write not stamped yet is not overwritten by a newer remote op", () => {
  const { mesh, nc, kv } = withLinkedMesh({
    sites: ["a", "b"],
    serviceArgs: ["--reconcile-interval", "0"],
  });

  it("I3 watcher down, local write, newer hand-made op: the write is kept, stamped above the op once the watcher is back, and wins at both sites", async () => {
    const watcher = mesh.services("a").find((s) => s.kind === "watcher")!;
    await watcher.stop();
    const writes: WriteRecord[] = [await putWrite(kv.a!, "a", "held.k", uniqueValue("a", 1, false))];
    const op: Op = {
      op: "put",
      bucket: "config",
      key: "held.k",
      value: "remote-newer",
      ts: (Date.now() + 5_000) * 1000,
      node_id: "site-r",
    };
    nc.a!.publish(OPS_INGRESS, JSON.stringify(op));
    await nc.a!.flush();
    // at a the merger commits the op to _meta but must leave the unstamped write alone (the op is not
    // forwarded: the write, stamped above it, will beat it everywhere)
    await until(async () => (await versions(nc.a!)).get("held.k")?.ts === op.ts, {
      message: "the merger never took the op",
    });
    assert.equal(
      (await kv.a!.get("held.k"))?.string(),
      "a:1",
      "the merger overwrote an unstamped local write",
    );
    watcher.spawn();
    await mesh.waitServices("a");
    await quiet(nc);
    for (const s of ["a", "b"]) {
      assert.equal((await kv[s]!.get("held.k"))?.string(), "a:1", `at ${s}`);
      const v = (await versions(nc[s]!)).get("held.k")!;
      assert.equal(v.node_id, "site-a");
      assert.ok(v.ts > op.ts, `at ${s}: stamped ${v.ts}, not above the op's ${op.ts}`);
    }
    const report = await checkOutcome({ ncs: nc, writes, handMade: [op], allowBeatenUnpublished: true });
    assert.deepEqual(report.problems, [], report.problems.join("\n"));
  });
});
