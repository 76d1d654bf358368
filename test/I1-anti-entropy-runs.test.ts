/**
 * I1 anti-entropy runs on a mesh with two reconciler instances per site and no periodic runs:
 * - on reconnect: a version planted behind the services' back at b during a partition (no op is
 *   published, so no stream can carry it) reaches a after the heal, by the run a peer's heal starts
 *   (SYNCD_RECONCILE_ON_HEAL=0 makes it fail: nothing else moves it);
 * - more than one reconciler per site: each instance discovers peers, yet the IN stream sources each
 *   peer once; concurrent `run` requests at both sites, served by either instance, all succeed and
 *   leave the sites equal.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { type ReconcilerRunResponse, Streams } from "../services/mod.ts";
import { call, contents, plantVersion, quiet, until, versions, withLinkedMesh } from "./helpers.ts";

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
