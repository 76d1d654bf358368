/**
 * I6 for a site that is a 3-node JetStream cluster (issue 11 point 5): the services create
 * everything with the replicas of the data bucket (R3 here), and when one node is killed while
 * writes go on at both sites, no acknowledged write is lost and replication goes on.
 */
import assert from "node:assert/strict";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import { connect } from "@nats-io/transport-node";
import { SiteServices } from "../scripts/lib/services.ts";
import { type ClusterSite, startClusterSite } from "../scripts/lib/topology.ts";
import { CLOCK_BUCKET, Streams, kvStream, metaBucket } from "../services/mod.ts";
import { type Mesh, startMesh } from "./harness/mesh.ts";
import { call, contents, peersLinked, until } from "./helpers.ts";

describe("I6 an R3 site loses a node while writes go on", () => {
  let mesh: Mesh;
  let cluster: ClusterSite;
  let services: SiteServices;
  let ncR: NatsConnection;
  let kvR: KV;

  before(async () => {
    mesh = await startMesh({ sites: ["a"], serviceArgs: ["--reconcile-interval", "0"] });
    cluster = await startClusterSite({ site: "r", dir: mesh.dir, hubLeafUrl: mesh.topology.hub.leafUrl });
    ncR = await connect({ servers: cluster.urls, maxReconnectAttempts: -1, name: "test-r" });
    // the data bucket is R3: the services take its replicas for everything they create
    kvR = await until(() => new Kvm(ncR).create("config", { history: 1, replicas: 3 }).catch(() => null), {
      timeout: 30_000,
      message: "the cluster's JetStream did not come up",
    });
    services = new SiteServices({
      site: "r",
      natsUrl: cluster.urls.join(","),
      nodeId: "site-r",
      extraArgs: ["--reconcile-interval", "0"],
      dir: path.join(mesh.dir, "services-r"),
    });
    await services.start({ clock: 1, watcher: 1, merger: 1, reconciler: 1 }).catch(() => {});
    // a JetStream request made while the new cluster still elects its leaders may time out and a
    // service then exits at start: start it again, as its supervisor (systemd, compose) would
    await until(
      async () => {
        const dead = services.instances.filter((i) => !i.alive());
        for (const i of dead) i.spawn();
        if (dead.length > 0) return false;
        return call(ncR, "r", "merger", "status")
          .then(() => call(ncR, "r", "watcher", "status"))
          .then(
            () => true,
            () => false,
          );
      },
      { timeout: 60_000, interval: 2000, message: "the R3 site's services did not come up" },
    );
    await peersLinked(ncR, "r", ["a"], 60_000);
  });
  after(async () => {
    await services?.stop();
    await ncR?.close();
    await cluster?.stop();
    await mesh?.stop();
  });

  it("I6 everything the services create at the site has 3 replicas", async () => {
    const jsm = await jetstreamManager(ncR);
    for (const s of [
      Streams.out("r"),
      Streams.in("r"),
      Streams.ingress("r"),
      Streams.dlq("r"),
      Streams.conflicts("r"),
      kvStream(metaBucket("config")),
      kvStream(CLOCK_BUCKET),
    ])
      assert.equal((await jsm.streams.info(s)).config.num_replicas, 3, s);
  });

  it("I6 a node killed mid-way: every acknowledged write reaches both sites", async () => {
    const kvA = await mesh.kv("a");
    const put = async (kv: KV, key: string, value: string) => {
      // a put during the leader election may time out: the user retries, as any client would
      for (;;) {
        try {
          await kv.put(key, value);
          return;
        } catch {
          await new Promise((r) => setTimeout(r, 200));
        }
      }
    };
    for (let i = 0; i < 60; i++) {
      if (i === 20) await cluster.kill(1);
      await put(kvR, `r3.r.${i}`, `r${i}`);
      await put(kvA, `r3.a.${i}`, `a${i}`);
    }
    const want = (prefix: string, v: string) =>
      Array.from({ length: 60 }, (_, i) => `${prefix}.${i}=${v}${i}`).join(",");
    const have = async (kv: KV, prefix: string) =>
      [...(await contents(kv))]
        .filter(([k]) => k.startsWith(`${prefix}.`))
        .sort((x, y) => Number(x[0].split(".").pop()) - Number(y[0].split(".").pop()))
        .map(([k, v]) => `${k}=${v}`)
        .join(",");
    await until(async () => (await have(kvA, "r3.r")) === want("r3.r", "r"), {
      timeout: 90_000,
      message: "a does not hold every write of the R3 site",
    });
    const diag = async () => {
      const jsm = await jetstreamManager(ncR);
      const fi = await jsm.streams.info(Streams.in("r"));
      const ci = await jsm.consumers.info(Streams.in("r"), "syncd-merger");
      return JSON.stringify({
        feed: {
          msgs: fi.state.messages,
          last: fi.state.last_seq,
          sources: fi.sources,
          leader: fi.cluster?.leader,
        },
        merger: { pending: ci.num_pending, ackPending: ci.num_ack_pending, delivered: ci.delivered },
        missing: (await have(kvR, "r3.a")).split(",").length,
      });
    };
    await until(async () => (await have(kvR, "r3.a")) === want("r3.a", "a"), {
      timeout: 90_000,
      message: "the R3 site does not hold every write of a",
    }).catch(async (err) => {
      throw new Error(`${(err as Error).message}: ${await diag()}\n${services.logs(20)}`);
    });
    await cluster.start(1);
  });
});
