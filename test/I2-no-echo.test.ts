/**
 * I2 no echo: a write the merger applies is never published again as a new op — the op count of
 * every stream stops growing, and equals the number of local writes.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type JetStreamManager, jetstreamManager } from "@nats-io/jetstream";
import { Streams } from "../services/mod.ts";
import { HUB_DOMAIN, contents, quiet, streamCount, withLinkedMesh } from "./helpers.ts";

describe("I2 no echo", () => {
  const { nc, kv } = withLinkedMesh({ sites: ["a", "b"] });

  it("I2 each local write is published exactly once; applied remote writes are not published again", async () => {
    const jsm = { a: await jetstreamManager(nc.a!), b: await jetstreamManager(nc.b!) };
    for (let i = 0; i < 20; i++) await kv.a!.put(`echo.a.${i}`, `v${i}`);
    for (let i = 0; i < 10; i++) await kv.b!.put(`echo.b.${i}`, `v${i}`);
    // 5 keys written on both sites at once: a conflict must not ping-pong
    await Promise.all(
      Array.from({ length: 5 }, (_, i) => [
        kv.a!.put(`echo.x.${i}`, "a"),
        kv.b!.put(`echo.x.${i}`, "b"),
      ]).flat(),
    );
    await quiet(nc);
    assert.equal((await contents(kv.b!)).size, 35);
    assert.deepEqual(await contents(kv.a!), await contents(kv.b!));
    // the logs are compacted per key, so count what was ever published (last_seq), not what is kept;
    // each IN holds every site's ops (its own come back through the hub's aggregate)
    const published = async (jsm: JetStreamManager, stream: string) =>
      (await jsm.streams.info(stream)).state.last_seq;
    const hub = await jetstreamManager(nc.a!, { domain: HUB_DOMAIN });
    const counts = async () => ({
      outA: await published(jsm.a, Streams.out("a")),
      outB: await published(jsm.b, Streams.out("b")),
      inA: await streamCount(jsm.a, Streams.in("a")),
      inB: await streamCount(jsm.b, Streams.in("b")),
      hub: await published(hub, Streams.hub),
    });
    const first = await counts();
    assert.deepEqual(first, { outA: 25, outB: 15, inA: 40, inB: 40, hub: 40 });
    await new Promise((r) => setTimeout(r, 1500));
    assert.deepEqual(await counts(), first, "op streams kept growing: an echo");
  });
});
