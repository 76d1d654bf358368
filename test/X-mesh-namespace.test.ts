/**
 * Two meshes on ONE hub (#14.2): the default mesh (sites a, b) and mesh `blue` (sites c, d, their
 * services started with `--mesh blue`). The same key written in both meshes converges to each mesh's
 * own value; nothing of one ever reaches the other (bucket history, the hub's two aggregates, the
 * FEED sources, the hand-made ingress); discovery ($SRV.PING metadata `mesh`, the reconcilers' peers,
 * `syncd micro ls`, `syncd status`), endpoint subjects and the members buckets are separate.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import {
  MEMBERS_BUCKET,
  OPS_INGRESS,
  type ReconcilerStatusResponse,
  Streams,
  endpointSubject,
  meshNames,
  parseReply,
  requestAnywhere,
} from "../services/mod.ts";
import { type Mesh, startMesh } from "./harness/mesh.ts";
import { HUB_DOMAIN, runSyncdCli, until } from "./helpers.ts";

const GREEN = meshNames();
const BLUE = meshNames("blue");
const SITES = ["a", "b", "c", "d"] as const;
type Site = (typeof SITES)[number];
const MESH_OF: Record<Site, typeof GREEN> = { a: GREEN, b: GREEN, c: BLUE, d: BLUE };
const cliEnv = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !k.startsWith("NATS_") && k !== "SYNCD_MESH"),
);

const cli = (args: string[]) => runSyncdCli(args, { env: cliEnv });

describe("X mesh namespace: two meshes on one hub never see each other", () => {
  let mesh: Mesh;
  const nc = {} as Record<Site, NatsConnection>;
  const kv = {} as Record<Site, KV>;
  const val = async (s: Site, key: string) => (await kv[s].get(key))?.string() ?? null;
  const hubSources = async (stream: string) => {
    const hub = await jetstreamManager(nc.a, { domain: HUB_DOMAIN, timeout: 2000 });
    return ((await hub.streams.info(stream)).config.sources ?? []).map((s) => s.name).sort();
  };

  before(async () => {
    mesh = await startMesh({
      sites: [...SITES],
      agent: true,
      serviceArgs: ["--reconcile-interval", "0"],
      siteServiceArgs: { c: ["--mesh", "blue"], d: ["--mesh", "blue"] },
    });
    for (const s of SITES) {
      nc[s] = await mesh.connect(s);
      kv[s] = await mesh.kv(s);
    }
    // both meshes linked through their own aggregate at the hub
    await until(
      async () => {
        try {
          const green = await hubSources(GREEN.hubStream);
          const blue = await hubSources(BLUE.hubStream);
          return green.length === 2 && blue.length === 2;
        } catch {
          return false;
        }
      },
      { timeout: 60_000, message: "the hub's aggregates never sourced both sites of each mesh" },
    );
  });
  after(async () => {
    await mesh?.stop();
  });

  it("the same key written in both meshes converges to each mesh's own value, nothing crosses", async () => {
    await kv.a.put("shared", "green-1");
    await kv.c.put("shared", "blue-1");
    await kv.b.put("only.green", "g");
    await kv.d.put("only.blue", "b");
    // hand-made ops, each on its mesh's ingress
    const handOp = (value: string) =>
      JSON.stringify({
        op: "put",
        bucket: "config",
        key: "hand",
        value,
        ts: Date.now() * 1000,
        node_id: "operator",
      });
    nc.a.publish(OPS_INGRESS, handOp("green-hand"));
    nc.c.publish(BLUE.opsIngress, handOp("blue-hand"));
    await until(
      async () =>
        (await val("b", "shared")) === "green-1" &&
        (await val("a", "only.green")) === "g" &&
        (await val("b", "hand")) === "green-hand",
      { timeout: 30_000, message: "the default mesh did not converge" },
    );
    await until(
      async () =>
        (await val("d", "shared")) === "blue-1" &&
        (await val("c", "only.blue")) === "b" &&
        (await val("d", "hand")) === "blue-hand",
      { timeout: 30_000, message: "mesh blue did not converge" },
    );
    // a last write in each mesh, seen at its other site: everything before it was delivered
    await kv.a.put("last", "green");
    await kv.c.put("last", "blue");
    await until(async () => (await val("b", "last")) === "green" && (await val("d", "last")) === "blue", {
      timeout: 30_000,
      message: "the last writes did not arrive",
    });

    for (const s of SITES) {
      const mine = MESH_OF[s] === GREEN ? "green" : "blue";
      const other = mine === "green" ? "blue" : "green";
      const hist = await kv[s].history({ key: ">" });
      const seen: string[] = [];
      for await (const e of hist) if (e.value.length > 0) seen.push(`${e.key}=${e.string()}`);
      assert.ok(
        seen.every((x) => !x.includes(other) && x !== (mine === "green" ? "only.blue=b" : "only.green=g")),
        `site ${s} (${mine}) held a value of the ${other} mesh: ${seen.join(", ")}`,
      );
      assert.equal(await val(s, "last"), mine);
    }

    // the hub keeps one aggregate per mesh, each sourcing its own sites' op logs only
    assert.deepEqual(await hubSources(GREEN.hubStream), [Streams.out("a"), Streams.out("b")]);
    assert.deepEqual(await hubSources(BLUE.hubStream), [Streams.out("c"), Streams.out("d")]);
    for (const s of SITES) {
      const jsm = await jetstreamManager(nc[s]);
      const feed = await jsm.streams.info(Streams.in(s));
      assert.deepEqual(
        (feed.config.sources ?? []).map((x) => x.name),
        [MESH_OF[s].hubStream],
      );
      assert.deepEqual((await jsm.streams.info(Streams.ingress(s))).config.subjects, [
        MESH_OF[s].opsIngress,
        `${MESH_OF[s].prefix}syncd.${s}.journal`,
      ]);
      assert.deepEqual((await jsm.streams.info(Streams.out(s))).config.subjects, [
        `${MESH_OF[s].prefix}rep.kv.ops.${s}.>`,
      ]);
    }
  });

  it("discovery, endpoints and membership are per mesh (PING metadata, peers, members buckets, CLI)", async () => {
    // endpoints: a blue site answers on blue's subjects only (from a, directly or through the hub relay)
    const ask = async (subject: string, timeout: number) =>
      parseReply<ReconcilerStatusResponse>(
        await requestAnywhere(nc.a, subject, { data: new TextEncoder().encode("{}") }, timeout),
        subject,
        2,
      ).value;
    const status = (_s: Site, subject: string) => ask(subject, 5000);
    await until(
      async () => {
        const a = await status("a", endpointSubject("a", "reconciler", "status"));
        const c = await status("c", `${BLUE.prefix}syncd.c.reconciler.status`);
        return a.peers.join() === "b" && c.peers.join() === "d";
      },
      { timeout: 30_000, message: "the reconcilers' peers are not their own mesh's sites" },
    );
    await assert.rejects(
      ask(endpointSubject("c", "reconciler", "status"), 1500),
      "site c must not answer on the default mesh's subject",
    );

    // $SRV.PING: the metadata names the mesh (asked at the hub, which sees every site)
    const hub = await mesh.connectHub();
    const replies = await hub.requestMany("$SRV.PING.syncd-merger", "", {
      strategy: "timer",
      maxWait: 1500,
    });
    const meshOf = new Map<string, string>();
    for await (const m of replies) {
      const md = m.json<{ metadata: Record<string, string> }>().metadata;
      meshOf.set(md.site!, md.mesh ?? "");
    }
    assert.deepEqual([...meshOf.entries()].sort(), [
      ["a", ""],
      ["b", ""],
      ["c", "blue"],
      ["d", "blue"],
    ]);

    // members: one bucket per mesh at the hub
    const hubKvm = new Kvm(jetstream(nc.a, { domain: HUB_DOMAIN }));
    const members = async (bucket: string) => {
      const keys: string[] = [];
      for await (const k of await (await hubKvm.open(bucket)).keys("sites.>")) keys.push(k);
      return keys.sort();
    };
    assert.equal(MEMBERS_BUCKET, GREEN.membersBucket);
    await until(
      async () => {
        try {
          return (
            (await members(GREEN.membersBucket)).join() === "sites.a,sites.b" &&
            (await members(BLUE.membersBucket)).join() === "sites.c,sites.d"
          );
        } catch {
          return false;
        }
      },
      { timeout: 30_000, message: "members buckets are not one per mesh" },
    );

    // the CLI sees the mesh it is told, from any site's server
    const ls = async (server: string, ...flags: string[]) => {
      const r = await cli(["micro", "ls", "--json", "--server", server, ...flags]);
      assert.equal(r.code, 0, r.stderr);
      return [...new Set((JSON.parse(r.stdout) as { site: string }[]).map((x) => x.site))].sort();
    };
    assert.deepEqual(await ls(mesh.sites.c!.url), ["a", "b"]);
    assert.deepEqual(await ls(mesh.sites.a!.url, "--mesh", "blue"), ["c", "d"]);
    const st = await cli(["status", "--json", "--server", mesh.sites.a!.url, "--mesh", "blue"]);
    assert.equal(st.code, 0, st.stderr);
    assert.deepEqual(
      (JSON.parse(st.stdout) as { sites: { site: string }[] }).sites.map((s) => s.site).sort(),
      ["c", "d"],
    );
  });
});
