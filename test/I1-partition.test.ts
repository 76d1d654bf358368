/**
 * I1 across partitions (DESIGN §5): writes made while the hub is down, or while a site's own server
 * is down, reach every site after the heal through JetStream store-and-forward — with anti-entropy
 * switched off (no periodic runs, and SYNCD_RECONCILE_ON_HEAL=0: a peer's heal starts no run; the
 * reconcilers' status proves they saw the heals and ran nothing) — and end with the LWW winners; the
 * op streams then stop growing (no cycle). On nats-server 2.10+, whose sources would wait out a
 * retry back-off after the heal, the catch-up is the mergers' re-arm of their FEED's source
 * (services/lib/rearm.ts): counted in their status, the source heard from again.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type StreamSourceInfo, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/nats-core";
import {
  Conditions,
  type MergerStatusResponse,
  OPS_INGRESS,
  type Op,
  REARM_STALL_MS,
  Streams,
  run as cli,
  opValue,
  sourcesBackOff,
} from "../services/mod.ts";
import { call, contents, quiet, until, versions, withLinkedMesh } from "./helpers.ts";
import { publishedOps } from "./workload.ts";

const SITES = ["a", "b", "c"];

// the services inherit the test process's environment: no run on a heal, discovery every second
process.env.SYNCD_RECONCILE_ON_HEAL = "0";
process.env.SYNCD_RECONCILE_DISCOVERY_MS = "1000";

type Status = { unreachable: string[]; counts: { runs: number; heals: number } };
const status = (nc: NatsConnection, site: string) => call<Status>(nc, site, "reconciler", "status");
/** The FEED's source of the hub at a site, as its server reports it. */
const feedSource = async (nc: NatsConnection, site: string): Promise<StreamSourceInfo | undefined> =>
  (await (await jetstreamManager(nc)).streams.info(Streams.in(site))).sources?.find(
    (s) => s.name === Streams.hub,
  );
/** nats-server 2.10+ backs off re-creating a failed source (2.9 retries every few seconds). */
const backsOff = (nc: NatsConnection) => sourcesBackOff(nc.info?.version);
/**
 * Silence of a FEED's source after which the server's own retry is surely under way: its health
 * check (every 10 s) has seen the source stalled, and the request it then sends to the unreachable
 * hub waits 30 s for an answer before the next one, with a back-off.
 */
const SERVER_RETRYING_MS = Math.max(REARM_STALL_MS, 10_000) + 12_000;
/** How long a FEED source the server reports as failed stays failed before the hub comes back. */
const SERVER_FAILING_MS = 12_000;

describe("I1 convergence after partitions, by store-and-forward", () => {
  const { mesh, nc, kv } = withLinkedMesh({ sites: SITES, serviceArgs: ["--reconcile-interval", "0"] });

  const same = async () => {
    const all = await Promise.all(SITES.map((s) => contents(kv[s]!)));
    return all.every((c) => JSON.stringify([...c].sort()) === JSON.stringify([...all[0]!].sort()))
      ? all[0]!
      : null;
  };

  it("I1 hub down: writes and deletes on every site, conflicting ones included, converge after the heal", async () => {
    await kv.a!.put("p.shared", "before");
    await kv.a!.put("p.doomed", "before");
    await until(async () => (await kv.c!.get("p.doomed"))?.string() === "before");
    await mesh.stopHub();
    // every reconciler sees its peers gone (so that the heal below is one it notices)
    for (const s of SITES)
      await until(async () => (await status(nc[s]!, s)).unreachable.length === SITES.length - 1, {
        message: `site ${s}'s reconciler still reaches its peers`,
      });
    for (const s of SITES) {
      for (let i = 0; i < 20; i++) await kv[s]!.put(`p.${s}.${i}`, `${s}${i}`);
      await kv[s]!.put("p.conflict", `from-${s}`);
    }
    await kv.b!.delete("p.doomed");
    const proveRearm = backsOff(nc.a!);
    const rearmedBefore = new Map<string, number>();
    if (proveRearm)
      for (const s of SITES) {
        rearmedBefore.set(
          s,
          (await call<MergerStatusResponse>(nc[s]!, s, "merger", "status")).counts.sources_rearmed ?? 0,
        );
        // the outage lasts until the site's server is stuck in its own retry of the FEED's source:
        // silent for long, or failed (2.15 reports a failed consumer create as an error or active -1,
        // and a retry in progress clears it) and then left down a while (its back-off grows)
        let failedAt: number | undefined;
        await until(
          async () => {
            const x = await feedSource(nc[s]!, s);
            // failed once (an error, or no consumer at all): the server's back-off has begun
            if (x?.error || (x?.active ?? 0) < 0) failedAt ??= Date.now();
            return (
              (x?.active ?? 0) / 1e6 >= SERVER_RETRYING_MS ||
              (failedAt !== undefined && Date.now() - failedAt >= SERVER_FAILING_MS)
            );
          },
          { timeout: 60_000, message: `site ${s}'s FEED source not silent yet` },
        );
      }
    // site c's watcher restarted while the hub is down: it starts without the hub (its log's check
    // against the hub waits for it) and publishes what is written meanwhile
    for (const i of mesh.services("c").filter((x) => x.kind === "watcher")) await i.stop();
    await kv.c!.put("p.c.while-stopped", "s");
    await mesh.startServices("c");
    await kv.c!.put("p.c.after-restart", "r");
    // two sites write one key while cut off: the greater of the two stamped versions wins (each
    // watcher stamps when it processes the write, so which one that is depends on the machine's load)
    await kv.c!.put("p.later", "from-c");
    await kv.a!.put("p.later", "from-a");
    // a hand-made op at a cut-off site travels too
    nc.c!.publish(
      OPS_INGRESS,
      JSON.stringify({
        op: "put",
        bucket: "config",
        key: "p.hand",
        value: "by-hand",
        ts: 1,
        node_id: "operator",
      }),
    );
    await mesh.startHub();
    const final = await until(same, { timeout: 90_000, message: "sites did not converge after the heal" });
    if (proveRearm)
      for (const s of SITES) {
        // the merger re-armed the stalled source once the hub answered, and the server took it up again
        const st = await call<MergerStatusResponse>(nc[s]!, s, "merger", "status");
        assert.ok(
          (st.counts.sources_rearmed ?? 0) > rearmedBefore.get(s)!,
          `site ${s}'s merger did not re-arm its FEED's source: ${JSON.stringify(st.counts)}`,
        );
        const src = await until(async () => {
          const x = await feedSource(nc[s]!, s);
          return x && x.active >= 0 && x.active < 3e9 ? x : null;
        });
        assert.equal(src.error, undefined);
      }
    for (const s of SITES) for (let i = 0; i < 20; i++) assert.equal(final.get(`p.${s}.${i}`), `${s}${i}`);
    assert.equal(final.get("p.c.while-stopped"), "s");
    assert.equal(final.get("p.c.after-restart"), "r");
    // nothing took c's log for one made again (its check waited for the hub, then found it in order)
    const out: string[] = [];
    await cli(
      ["status", "--json", "--site", "c", "--server", mesh.sites.c!.url],
      { out: (x) => void out.push(x), err: () => {} },
      {},
    );
    const conds = (
      JSON.parse(out.join("\n")) as { sites: { conditions: { code: string }[] }[] }
    ).sites.flatMap((x) => x.conditions.map((c) => c.code));
    assert.ok(!conds.includes(Conditions.streamRecreated), `c raised ${conds.join(",")}`);
    assert.equal(final.has("p.doomed"), false, "delete lost");
    const later = (await publishedOps(nc)).filter((p) => p.op.key === "p.later").map((p) => p.op);
    assert.equal(later.length, 2, JSON.stringify(later));
    const [x, y] = later as [Op, Op];
    const greater = x.ts !== y.ts ? (x.ts > y.ts ? x : y) : x.node_id > y.node_id ? x : y;
    assert.equal(final.get("p.later"), new TextDecoder().decode(opValue(greater)), "not the greater version");
    assert.equal(final.get("p.hand"), "by-hand");
    const v = await versions(nc.a!);
    assert.equal(final.get("p.conflict"), `from-${v.get("p.conflict")!.node_id.slice(5)}`);
    for (const s of SITES)
      assert.deepEqual((await versions(nc[s]!)).get("p.conflict")?.node_id, v.get("p.conflict")?.node_id);
  });

  it("I1 a site's own server down and back: it catches up both ways", async () => {
    await mesh.stopServer("b");
    await kv.a!.put("o.from-a", "1");
    await kv.c!.delete("p.shared");
    await mesh.startServer("b");
    await kv.b!.put("o.from-b", "2");
    const final = await until(
      async () => {
        const c = await same();
        return c?.get("o.from-a") === "1" && c.get("o.from-b") === "2" && !c.has("p.shared") ? c : null;
      },
      { timeout: 90_000, message: "site b did not catch up" },
    );
    assert.ok(final);
  });

  it("no cycle: after the heal, the op count of every stream stops growing", async () => {
    await quiet(nc, { timeout: 30_000 });
    // the logs are compacted per key: count what was ever stored (last_seq)
    const count = async () =>
      Promise.all(
        SITES.flatMap((s) =>
          [Streams.out(s), Streams.in(s)].map(
            async (st) => (await (await jetstreamManager(nc[s]!)).streams.info(st)).state.last_seq,
          ),
        ),
      );
    const first = await count();
    await new Promise((r) => setTimeout(r, 2000));
    assert.deepEqual(await count(), first);
  });

  it("I1 no anti-entropy run did any of it: every reconciler saw its peers heal and ran nothing", async () => {
    for (const s of SITES) {
      const st = await until(
        async () => {
          const x = await status(nc[s]!, s);
          return x.counts.heals >= SITES.length - 1 && x.unreachable.length === 0 ? x : null;
        },
        { message: `site ${s}'s reconciler did not see its peers heal` },
      );
      assert.equal(st.counts.runs, 0, `site ${s}'s reconciler ran: ${JSON.stringify(st.counts)}`);
    }
  });
});
