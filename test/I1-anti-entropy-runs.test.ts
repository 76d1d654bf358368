/**
 * I1 anti-entropy runs on a mesh with two reconciler instances per site and no periodic runs:
 * - on reconnect: a version planted behind the services' back at b during a partition (no op is
 *   published, so no stream can carry it) reaches a after the heal, by the run a peer's heal starts
 *   (SYNCD_RECONCILE_ON_HEAL=0 makes it fail: nothing else moves it);
 * - more than one reconciler per site: each instance discovers peers, yet the IN stream sources each
 *   peer once; concurrent `run` requests at both sites, served by either instance, all succeed and
 *   leave the sites equal;
 * - a hub that isolates leaf interest (nats-server 2.12+; skipped on older servers): a site does not
 *   see the others' endpoints, anti-entropy goes through the hub relay and repairs a purged bucket
 *   both ways (pulled and pushed), and a site's subscription count does not grow when a site joins.
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { findNatsServer, supportsLeafIsolation } from "../scripts/lib/topology.ts";
import { type ReconcilerRunResponse, Streams, endpointSubject, kvStream } from "../services/mod.ts";
import {
  call,
  contents,
  peersLinked,
  plantVersion,
  quiet,
  until,
  versions,
  withLinkedMesh,
} from "./helpers.ts";

process.env.SYNCD_RECONCILE_DISCOVERY_MS = "1000";

type Status = {
  instance: string;
  unreachable: string[];
  counts: { runs: number; heals: number; pulled: number };
};

describe("I1 anti-entropy runs: on reconnect, and with two reconcilers per site", () => {
  const { mesh, nc, kv } = withLinkedMesh({
    sites: ["a", "b"],
    scale: { reconciler: 2 },
    serviceArgs: ["--reconcile-interval", "0"],
  });

  const status = (site: string) => call<Status>(nc[site]!, site, "reconciler", "status");

  it("I1 a version planted during a partition reaches the other site by the run started on reconnect", async () => {
    await mesh.stopHub();
    await until(async () => (await status("a")).unreachable.includes("b"), {
      message: "a's reconciler still reaches b",
    });
    const ts = Date.now() * 1000;
    await plantVersion(nc.b!, { key: "heal.planted", ts, node_id: "site-q", value: "only-by-anti-entropy" });
    await mesh.startHub();
    await until(async () => (await kv.a!.get("heal.planted"))?.string() === "only-by-anti-entropy", {
      timeout: 30_000,
      message: "the planted version never reached a: no run on reconnect",
    });
    const v = (await versions(nc.a!)).get("heal.planted");
    assert.deepEqual([v?.ts, v?.node_id], [ts, "site-q"]);
    await until(
      async () => {
        const x = await status("a");
        return x.counts.heals > 0 && x.counts.runs > 0 ? x : null;
      },
      { message: "no instance of a's reconciler reports a heal and a run" },
    );
  });

  it("I1 two reconcilers per site: each peer sourced once, concurrent runs at both sites all succeed, the sites end equal", async () => {
    const info = await (await jetstreamManager(nc.a!)).streams.info(Streams.in("a"));
    const names = (info.config.sources ?? []).map((s) => s.name);
    assert.deepEqual(names, [...new Set(names)], `duplicate sources: ${names}`);
    const instances = await until(
      async () => {
        const seen = new Set<string>();
        for (let i = 0; i < 20; i++) seen.add((await status("a")).instance);
        return seen.size >= 2 ? seen : null;
      },
      { message: "only one reconciler instance of a answers" },
    );
    assert.equal(instances.size, 2);
    const now = Date.now() * 1000;
    for (let i = 0; i < 10; i++) {
      await plantVersion(nc[i % 2 ? "a" : "b"]!, {
        key: `multi.${i}`,
        ts: now + i,
        node_id: "site-p",
        value: `p${i}`,
      });
    }
    const runs = await Promise.all(
      ["a", "b", "a", "b"].map((s) => call<ReconcilerRunResponse>(nc[s]!, s, "reconciler", "run", {})),
    );
    for (const r of runs) for (const rec of r.runs) assert.equal(rec.error, undefined, JSON.stringify(rec));
    await quiet(nc);
    const [ca, cb] = [await contents(kv.a!), await contents(kv.b!)];
    for (let i = 0; i < 10; i++) {
      assert.equal(ca.get(`multi.${i}`), `p${i}`, `multi.${i} at a`);
      assert.equal(cb.get(`multi.${i}`), `p${i}`, `multi.${i} at b`);
    }
  });
});

/**
 * Subscriptions of the hub itself per site, which reach every site: the aggregate's source of the
 * site's op log (deliver subject and two flow-control subjects) and the flow control of its
 * reconciler's members-bucket watch (two). East-west interest, without isolation, is ~90 per site.
 */
const HUB_OWN_PER_SITE = 6;

describe(
  "I1 anti-entropy through a hub that isolates leaf interest",
  {
    skip: supportsLeafIsolation(findNatsServer()) ? false : "nats-server < 2.12 cannot isolate leaf interest",
  },
  () => {
    const sites = ["a", "b", "c"];
    const { mesh, nc, kv } = withLinkedMesh({
      sites,
      isolate: true,
      serviceArgs: ["--reconcile-interval", "0"],
    });

    before(async () => {
      for (let i = 0; i < 12; i++) await kv.a!.put(`iso.${i}`, `v${i}`);
      for (const s of sites)
        await until(async () => (await contents(kv[s]!)).size === 12, { message: `seed at ${s}` });
      await quiet(nc);
    });

    const run = (site: string, peer: string) =>
      call<ReconcilerRunResponse>(nc[site]!, site, "reconciler", "run", { peers: [peer] });
    /** What the hub told a site it is interested in (the site's leaf connection). */
    const fromHub = async (site: string) => {
      const r = await fetch(`${mesh.sites[site]!.monitorUrl}/leafz?subs=1`);
      const j = (await r.json()) as { leafs: { subscriptions_list?: string[] }[] };
      return j.leafs.flatMap((l) => l.subscriptions_list ?? []);
    };
    const subscriptions = async (site: string) => {
      const r = await fetch(`${mesh.sites[site]!.monitorUrl}/subsz`);
      return ((await r.json()) as { num_subscriptions: number }).num_subscriptions;
    };

    it("I1 isolated: a site does not see another site's endpoints, yet anti-entropy repairs a purge both ways", async () => {
      await assert.rejects(
        nc.a!.request(endpointSubject("b", "reconciler", "status"), "{}", { timeout: 2000 }),
        (err: Error) => /no responders/i.test(`${err.message} ${(err.cause as Error | undefined)?.message}`),
        "site a sees b's endpoints: the hub does not isolate leaf interest",
      );
      const want = await contents(kv.a!);
      const jsm = await jetstreamManager(nc.b!);
      await jsm.streams.purge(kvStream("config"));
      assert.equal((await contents(kv.b!)).size, 0);
      const pulled = (await run("b", "a")).runs[0]!;
      assert.equal(pulled.error, undefined, JSON.stringify(pulled));
      assert.equal(pulled.pulled, 12, JSON.stringify(pulled));
      assert.deepEqual([...(await contents(kv.b!))].sort(), [...want].sort());

      await (await jetstreamManager(nc.c!)).streams.purge(kvStream("config"));
      const pushed = (await run("a", "c")).runs[0]!;
      assert.equal(pushed.error, undefined, JSON.stringify(pushed));
      assert.equal(pushed.pushed, 12, JSON.stringify(pushed));
      assert.deepEqual([...(await contents(kv.c!))].sort(), [...want].sort());
      const counts = (await call<Status>(nc.a!, "a", "reconciler", "status")).counts as Record<
        string,
        number
      >;
      assert.ok(
        (counts.requests_relayed ?? 0) > 0,
        `a's requests to c took no relay: ${JSON.stringify(counts)}`,
      );
    });

    it("I1 isolated: a site learns none of a joining site's subscriptions; its count grows only by the hub's own", async (t) => {
      await quiet(nc);
      const before = await subscriptions("a");
      const heard0 = new Set(await fromHub("a"));
      await mesh.addSite("d");
      nc.d = await mesh.connect("d");
      kv.d = await mesh.kv("d");
      await peersLinked(nc.d, "d", sites);
      await until(async () => (await contents(kv.d!)).size === 12, { message: "d never got the seed" });
      await quiet(nc);
      const after = await subscriptions("a");
      const added = (await fromHub("a")).filter((s) => !heard0.has(s));
      t.diagnostic(
        `subscriptions at site a: ${before} with 3 sites, ${after} with 4; new from the hub: ${added.join(" ")}`,
      );
      // d's own interest (its endpoints, $SRV, its JetStream API, inboxes) never reaches a; what does
      // is the hub's own JetStream interest for d: the aggregate's source of d's op log (deliver and
      // flow-control subjects) and the flow control of d's reconciler's watch of the members bucket
      const foreign = added.filter((s) => !/^\$JS\.(S|FC)\./.test(s));
      assert.deepEqual(foreign, [], "site a learned subscriptions of site d");
      assert.ok(after - before <= HUB_OWN_PER_SITE, `site a went from ${before} to ${after} subscriptions`);
    });
  },
);
