/**
 * I1 for partitions of any length (issue 11 point 3): the op logs are bounded by keys (compacted per
 * key), not by age, so a site offline far longer than the retention the services are given
 * (`--ops-max-age 1`, which once bounded the op streams) catches up with nothing lost and no
 * anti-entropy run, and a new site bootstraps from the compacted logs alone, tombstones included.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { Streams } from "../services/mod.ts";
import { contents, peersLinked, until, versions, withLinkedMesh } from "./helpers.ts";

const SITES = ["a", "b", "c"];
const sorted = (m: Map<string, string>) => JSON.stringify([...m].sort());

describe("I1 partitions of any length, by the compacted logs alone", () => {
  const { mesh, nc, kv } = withLinkedMesh({
    sites: SITES,
    serviceArgs: ["--reconcile-interval", "0", "--ops-max-age", "1"],
  });

  it("I1 a site offline far longer than the old retention catches up, tombstones included", async () => {
    await mesh.stopServer("c");
    for (let v = 0; v < 3; v++) for (let i = 0; i < 30; i++) await kv.a!.put(`long.a.${i}`, `a${i}.${v}`);
    for (let i = 0; i < 5; i++) await kv.a!.delete(`long.a.${i}`);
    for (let i = 0; i < 10; i++) await kv.b!.put(`long.b.${i}`, `b${i}`);
    // the partition outlasts the 1 s the streams once kept ops for
    await new Promise((r) => setTimeout(r, 3000));
    await mesh.startServer("c");
    const want = await until(
      async () => {
        const a = await contents(kv.a!);
        return a.size === 35 && sorted(a) === sorted(await contents(kv.b!)) ? a : null;
      },
      { message: "a and b did not converge" },
    );
    await until(async () => sorted(await contents(kv.c!)) === sorted(want), {
      timeout: 90_000,
      message: "site c did not catch up",
    });
    const vc = await versions(nc.c!);
    for (let i = 0; i < 5; i++) assert.equal(vc.get(`long.a.${i}`)?.deleted, true, `tombstone long.a.${i}`);
    // compacted: a's log holds one op per key though it published more (up to 95: the watcher may
    // publish only the greatest of several versions of a key it handles in one batch)
    const out = await (await jetstreamManager(nc.a!)).streams.info(Streams.out("a"));
    assert.equal(out.state.messages, 30);
    assert.ok(out.state.last_seq > 30 && out.state.last_seq <= 95, `last_seq ${out.state.last_seq}`);
    assert.equal(out.config.max_age, 0);
    assert.equal(out.config.max_msgs_per_subject, 1);
  });

  it("I1 a new site bootstraps from the compacted logs alone, tombstones included", async () => {
    const want = await contents(kv.a!);
    await mesh.addSite("d");
    nc.d = await mesh.connect("d");
    kv.d = await mesh.kv("d");
    await peersLinked(nc.d, "d", ["a", "b", "c"]);
    await until(async () => sorted(await contents(kv.d!)) === sorted(want), {
      timeout: 60_000,
      message: "site d did not bootstrap",
    });
    const vd = await versions(nc.d);
    for (let i = 0; i < 5; i++) assert.equal(vd.get(`long.a.${i}`)?.deleted, true, `tombstone long.a.${i}`);
  });
});
