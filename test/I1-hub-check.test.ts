/**
 * I1 at a thousand sites (#11.1): a site keeps its op log among the hub aggregate's sources with a
 * periodic check whose cost at the hub does not grow with the number of sites between full rounds.
 * The aggregate's info lists every source (its size grows with N); a registered, healthy site reads
 * it only every few periods, and in between reads one message of the aggregate (the copy of its own
 * log's last op). A write in between still replicates, and a site whose registration was removed
 * behind its back registers again at its next write.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import type { Subscription } from "@nats-io/nats-core";
import { Conditions, Streams, type WatcherStatusResponse } from "../services/mod.ts";
import { HUB_DOMAIN, call, quiet, until, withLinkedMesh } from "./helpers.ts";

const PERIOD_MS = 500;
// for the services of this file's mesh: a short check period; no tombstone passes (they read the hub too)
process.env.SYNCD_HUB_RECHECK_MS = String(PERIOD_MS);
process.env.SYNCD_TOMBSTONE_GC_MS = "0";
const SITES = ["a", "b"];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("I1 the check of a site's place at the hub", () => {
  const { mesh, nc, kv } = withLinkedMesh({ sites: SITES, serviceArgs: ["--reconcile-interval", "0"] });

  /** Requests the hub's JetStream gets on `api` (e.g. STREAM.INFO.<stream>), with or without the domain prefix. */
  const counter = async (api: string) => {
    const hub = await mesh.connectHub();
    let n = 0;
    const subs: Subscription[] = [`$JS.API.${api}`, `$JS.${HUB_DOMAIN}.API.${api}`].map((s) =>
      hub.subscribe(s, {
        callback: () => {
          n++;
        },
      }),
    );
    await hub.flush();
    return {
      n: () => n,
      stop: () => {
        for (const s of subs) s.unsubscribe();
      },
    };
  };

  it("I1 idle sites read the aggregate's info (every source listed) at most every 4th check; the checks between read one message", async () => {
    for (const s of SITES) await kv[s]!.put(`hubcheck.${s}`, "v");
    await quiet(nc, { timeout: 60_000 });
    const infos = await counter(`STREAM.INFO.${Streams.hub}`);
    const gets = await counter(`STREAM.MSG.GET.${Streams.hub}`);
    const t0 = Date.now();
    await sleep(5000);
    const periods = (Date.now() - t0) / PERIOD_MS;
    infos.stop();
    gets.stop();
    const most = SITES.length * (Math.ceil(periods / 4) + 1);
    console.log(
      `# ${periods.toFixed(1)} periods: ${infos.n()} info reads (at most ${most}), ${gets.n()} message reads`,
    );
    assert.ok(infos.n() <= most, `${infos.n()} reads of the aggregate's info in ${periods} periods`);
    assert.ok(gets.n() >= SITES.length * 2, `only ${gets.n()} cheap checks`);
  });

  it("I1 a site's source added to an aggregate that holds nothing of it and has compacted copies the site's whole log, not from the aggregate's last message time", async () => {
    await quiet(nc, { timeout: 60_000 });
    const hub = await jetstreamManager(await mesh.connectHub());
    // b's source dropped (a concurrent source-list write, an operator) while the aggregate holds
    // nothing of b's log and its first sequence is past 1 (as once it compacted): a purge does both
    const info = await hub.streams.info(Streams.hub);
    await hub.streams.update(Streams.hub, {
      ...info.config,
      sources: (info.config.sources ?? []).filter((s) => s.name !== Streams.out("b")),
    });
    await hub.streams.purge(Streams.hub);
    assert.ok((await hub.streams.info(Streams.hub)).state.first_seq > 1);
    // b writes while it is no source; a writes after it (the aggregate's last message is then newer)
    await kv.b!.put("fresh.b", "from-b");
    await until(async () =>
      (await jetstreamManager(nc.b!)).streams.info(Streams.out("b")).then((i) => i.state.messages > 0),
    );
    await sleep(50);
    await kv.a!.put("fresh.a", "after");
    // b's watcher adds its source again (a cheap check finds the hub behind): b's write arrives
    await until(async () => (await kv.a!.get("fresh.b"))?.string() === "from-b", {
      timeout: 30_000,
      message: "b's write made while its source was missing never reached a",
    });
  });

  it("I1 a site whose source was removed from the aggregate behind its back is registered again at its next write, which replicates", async () => {
    await quiet(nc, { timeout: 60_000 });
    const hub = await jetstreamManager(await mesh.connectHub());
    const info = await hub.streams.info(Streams.hub);
    // long enough after the last full round for cheap checks to find everything held
    await sleep(PERIOD_MS * 3);
    await hub.streams.update(Streams.hub, {
      ...info.config,
      sources: (info.config.sources ?? []).filter((s) => s.name !== Streams.out("a")),
    });
    await kv.a!.put("hubcheck.k", "after");
    await until(async () => (await kv.b!.get("hubcheck.k"))?.string() === "after", {
      timeout: 30_000,
      message: "the write at a never reached b",
    });
    const names = (await hub.streams.info(Streams.hub)).config.sources?.map((s) => s.name) ?? [];
    assert.ok(names.includes(Streams.out("a")), `a is not a source again: ${names.join(",")}`);
  });

  it("I1 a site's entry registered by an earlier version (no start sequence) is given one by its watcher", async () => {
    const hub = await jetstreamManager(await mesh.connectHub());
    const info = await hub.streams.info(Streams.hub);
    await hub.streams.update(Streams.hub, {
      ...info.config,
      sources: (info.config.sources ?? []).map((s) => {
        if (s.name !== Streams.out("a")) return s;
        const { opt_start_seq: _, ...old } = s;
        return old;
      }),
    });
    const startOf = async () =>
      (await hub.streams.info(Streams.hub)).config.sources?.find((s) => s.name === Streams.out("a"))
        ?.opt_start_seq;
    assert.equal(await startOf(), undefined);
    await until(async () => (await startOf()) === 1, { message: "a's entry was not upgraded" });
  });

  it("I1 the hub's aggregate near its byte limit (it would drop keys' only ops) is raised at every site, an error at 95 %; cleared when the limit is raised", async () => {
    const hub = await jetstreamManager(await mesh.connectHub());
    const info = await hub.streams.info(Streams.hub);
    assert.ok(info.state.bytes > 0);
    const hubFilling = async (site: string) =>
      (await call<WatcherStatusResponse>(nc[site]!, site, "watcher", "status")).conditions?.find(
        (c) => c.code === Conditions.storeFilling && c.subject === Streams.hub,
      );
    await hub.streams.update(Streams.hub, { ...info.config, max_bytes: Math.ceil(info.state.bytes / 0.97) });
    try {
      for (const s of SITES) {
        const c = await until(
          async () => {
            const f = await hubFilling(s);
            return f?.severity === "error" ? f : null;
          },
          { timeout: 30_000, message: `STORE_FILLING of ${Streams.hub} never raised at ${s}` },
        );
        assert.match(c.message, /anti-entropy/);
      }
    } finally {
      await hub.streams.update(Streams.hub, info.config);
    }
    for (const s of SITES)
      await until(async () => (await hubFilling(s)) === undefined, {
        timeout: 30_000,
        message: `STORE_FILLING of ${Streams.hub} never cleared at ${s}`,
      });
  });
});
