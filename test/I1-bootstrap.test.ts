/**
 * I1 for a site that joins late (issue: new site bootstrap): a third site added to a running mesh
 * with an empty bucket ends with the full state of the mesh, tombstones included — from the hub's
 * aggregate it sources, and from anti-entropy for what no log holds any more (purged here from a's
 * log and from the aggregate) — and from then on
 * replicates like the others. Adding it needs no change at the existing sites.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { type ReconcilerRunResponse, Streams, opsFilter } from "../services/mod.ts";
import {
  HUB_DOMAIN,
  call,
  contents,
  peersLinked,
  quiet,
  until,
  versions,
  withLinkedMesh,
} from "./helpers.ts";

describe("I1 a site joining late gets the whole state", () => {
  const { mesh, nc, kv } = withLinkedMesh({ sites: ["a", "b"], serviceArgs: ["--reconcile-interval", "0"] });

  it("I1 bootstrap: streams and anti-entropy bring every key and tombstone to the new site", async () => {
    // old history, then purged from a's op stream: only anti-entropy can still carry it
    for (let i = 0; i < 10; i++) await kv.a!.put(`old.${i}`, `o${i}`);
    await kv.a!.delete("old.0");
    await until(async () => (await contents(kv.b!)).size === 9);
    await quiet({ a: nc.a!, b: nc.b! });
    await (await jetstreamManager(nc.a!)).streams.purge(Streams.out("a"));
    await (await jetstreamManager(nc.a!, { domain: HUB_DOMAIN })).streams.purge(Streams.hub, {
      filter: opsFilter("a"),
    });
    // recent history, still in the streams
    for (let i = 0; i < 10; i++) await kv.b!.put(`new.${i}`, `n${i}`);
    await kv.b!.delete("new.0");
    await quiet({ a: nc.a!, b: nc.b! });

    await mesh.addSite("c");
    nc.c = await mesh.connect("c");
    kv.c = await mesh.kv("c");
    await peersLinked(nc.c, "c", ["a", "b"]);
    await peersLinked(nc.a!, "a", ["c"]);
    // the streams alone bring the recent history
    await until(async () => (await contents(kv.c!)).get("new.9") === "n9", { timeout: 20_000 });
    // anti-entropy brings what no stream holds any more
    const run = await call<ReconcilerRunResponse>(nc.c, "c", "reconciler", "run", {});
    assert.ok(
      run.runs.some((r) => r.peer === "a" && r.pulled > 0),
      JSON.stringify(run),
    );
    const want = await contents(kv.a!);
    await until(
      async () => JSON.stringify([...(await contents(kv.c!))].sort()) === JSON.stringify([...want].sort()),
      {
        message: "site c does not hold the mesh's state",
      },
    );
    const vc = await versions(nc.c);
    assert.equal(vc.get("old.0")?.deleted, true, "tombstone old.0 missing at c");
    assert.equal(vc.get("new.0")?.deleted, true, "tombstone new.0 missing at c");
    // and from then on it replicates like the others
    await kv.c.put("from.c", "hello");
    await until(async () => (await kv.a!.get("from.c"))?.string() === "hello");
    await until(async () => (await kv.b!.get("from.c"))?.string() === "hello");
    await kv.a!.put("to.c", "hi");
    await until(async () => (await kv.c!.get("to.c"))?.string() === "hi");
  });
});
