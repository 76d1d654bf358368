/**
 * One process per site (issue 13 point 1): the mesh with each site's four services in one agent
 * process (`run.mjs agent`). Still four micro services per site, each answering PING and scalable by
 * starting more instances of one kind; one NATS connection per agent. The core checks run again in
 * this mode: I1 convergence, I2 no echo, I3 no lost write (a concurrent workload with deletes and
 * binary values, checked by checkOutcome) and I6 (the agent killed with kill -9 during the workload).
 * And the counters of two instances wired in one process do not mix.
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { Svcm } from "@nats-io/services";
import { pingSite } from "../scripts/lib/services.ts";
import {
  AGENT_NAME,
  Metrics,
  type Running,
  type ServiceDef,
  ServiceName,
  SharedMetaCaches,
  Streams,
  VERSION,
  clockService,
  createLogger,
  endpointSubject,
  kvStream,
  loadConfig,
  mergerService,
  metaBucket,
  openSite,
  watcherService,
} from "../services/mod.ts";
import { quiet, streamCount, until, withLinkedMesh, withMesh } from "./helpers.ts";
import { type WriteRecord, checkOutcome, keySet, runWorkload, seedFromEnv, soakMs } from "./workload.ts";

const SITES = ["a", "b"];

describe("I5 agent mode: a site's four services in one process", { timeout: 600_000 }, () => {
  // a second merger at a: the agent runs instance 1 of every kind, merger-2 runs on its own
  const lm = withLinkedMesh({
    sites: SITES,
    agent: true,
    scale: { merger: 2 },
    serviceArgs: ["--reconcile-interval", "0"],
    readyTimeoutMs: 60_000,
  });
  const { mesh } = lm;
  const writes: WriteRecord[] = [];

  it("I5 one agent process per site, four micro services in it, one connection; more instances of a kind beside it", async () => {
    for (const s of SITES) {
      const procs = mesh.services(s);
      assert.deepEqual(procs.map((i) => i.name).sort(), ["agent-1", "merger-2"], `site ${s} processes`);
      const found = await pingSite(lm.nc[s]!, s, 500);
      const fromAgent = found.filter((f) => f.instance === "agent-1").map((f) => f.name);
      assert.deepEqual(
        fromAgent.sort(),
        Object.values(ServiceName).sort(),
        `site ${s}: services in the agent`,
      );
      assert.deepEqual(
        found.filter((f) => f.instance === "merger-2").map((f) => f.name),
        [ServiceName.merger],
      );
      const connz = (await (await fetch(`${mesh.sites[s]!.monitorUrl}/connz?limit=1024`)).json()) as {
        connections: { name?: string }[];
      };
      const agentConns = connz.connections.filter((c) => c.name?.startsWith(`${AGENT_NAME}-${s}-`));
      assert.equal(agentConns.length, 1, `site ${s}: connections of the agent`);
    }
  });

  it("I5 one `_meta` watch per process per bucket: the agent's cache and version index share it", async () => {
    for (const s of SITES) {
      const jsm = await jetstreamManager(lm.nc[s]!);
      const delivers = new Set<string>();
      for await (const c of jsm.consumers.list(kvStream(metaBucket("config"))))
        if (c.config.deliver_subject) delivers.add(c.config.deliver_subject);
      const connz = (await (await fetch(`${mesh.sites[s]!.monitorUrl}/connz?limit=1024&subs=1`)).json()) as {
        connections: { name?: string; subscriptions_list?: string[] }[];
      };
      const watchesOf = (prefix: string) =>
        connz.connections
          .filter((c) => c.name?.startsWith(prefix))
          .flatMap((c) => c.subscriptions_list ?? [])
          .filter((sub) => delivers.has(sub)).length;
      assert.equal(watchesOf(`${AGENT_NAME}-${s}-`), 1, `site ${s}: watches of ${s}'s _meta by the agent`);
      assert.equal(
        watchesOf(`${ServiceName.merger}-${s}-`),
        1,
        `site ${s}: watches of ${s}'s _meta by merger-2`,
      );
    }
  });

  it("I1 I2 I3 concurrent writes with deletes on both sites converge; each write published at most once, the last of each key exactly once", async () => {
    const seed = seedFromEnv("AGENT_SEED");
    const w = await runWorkload({
      ncs: lm.nc,
      keys: keySet("agent", 30),
      writersPerSite: 3,
      durationMs: soakMs(3000),
      maxWritesPerSite: 600,
      seed,
    });
    writes.push(...w.writes);
    await quiet(lm.nc, { timeout: 60_000 });
    const report = await checkOutcome({ ncs: lm.nc, writes });
    assert.deepEqual(report.problems, [], `AGENT_SEED=${seed}\n${report.problems.join("\n")}`);
    assert.ok(report.keys > 0);
  });

  it("I2 applied remote writes are never published again: the op streams stop growing", async () => {
    const jsm = { a: await jetstreamManager(lm.nc.a!), b: await jetstreamManager(lm.nc.b!) };
    const out = async () => [
      await streamCount(jsm.a, Streams.out("a")),
      await streamCount(jsm.b, Streams.out("b")),
    ];
    const first = await out();
    await new Promise((r) => setTimeout(r, 1500));
    assert.deepEqual(await out(), first, "op streams kept growing: an echo");
  });

  it("I6 the agent killed with kill -9 during a write workload: nothing lost, converged, nothing published twice", async () => {
    const seed = seedFromEnv("AGENT_SEED") ^ 0x6;
    const agent = mesh.services("a").find((i) => i.kind === "agent")!;
    const work = runWorkload({
      ncs: lm.nc,
      keys: keySet("agent6", 30),
      writersPerSite: 2,
      durationMs: soakMs(4000),
      maxWritesPerSite: 800,
      seed,
    });
    await new Promise((r) => setTimeout(r, 700));
    await agent.kill9();
    await new Promise((r) => setTimeout(r, 700));
    agent.spawn();
    const w = await work;
    writes.push(...w.writes);
    await mesh.waitServices();
    // the killed agent's unacknowledged messages come back after the consumers' ack wait
    await quiet(lm.nc, { timeout: 90_000 });
    const report = await checkOutcome({ ncs: lm.nc, writes, allowBeatenUnpublished: true });
    assert.deepEqual(report.problems, [], `AGENT_SEED=${seed}\n${report.problems.join("\n")}`);
  });
});

describe("I5 agent mode: counters are per wired instance", () => {
  const { mesh, nc: ncs } = withMesh({ sites: ["a"], services: false, agent: true });
  let kvA: KV;
  before(async () => {
    kvA = await mesh.kv("a");
  });

  it(
    "two instances of clock, watcher and merger wired in one process count only their own work",
    { timeout: 120_000 },
    async () => {
      const nc = await mesh.connect("a", { name: "two-instances" });
      const config = loadConfig(
        ["--site", "a", "--nats-url", mesh.sites.a!.url, "--reconcile-interval", "0"],
        {},
      );
      const log = createLogger({ service: "test", site: "a", instance: "t", level: "warn" });
      const site = await openSite(nc, config, log);
      const caches = new SharedMetaCaches(site, log);
      const svcm = new Svcm(nc);
      const defs: ServiceDef[] = [clockService, watcherService, mergerService];
      const wired: { def: ServiceDef; running: Running; stop: () => Promise<void> }[] = [];
      try {
        for (const def of [...defs, ...defs]) {
          const service = await svcm.add({
            name: ServiceName[def.kind],
            version: VERSION,
            queue: "syncd",
          });
          const running = await def.wire({
            config,
            log,
            nc,
            site,
            service,
            metaCache: (b) => caches.get(b),
            // one registry per wired instance: two instances of a kind register the same names
            metrics: new Metrics({ service: ServiceName[def.kind] }, { processMetrics: false }),
          });
          wired.push({ def, running, stop: async () => void (await service.stop()) });
        }
        const N = 40;
        const sum = <D>(kind: string, ep: string, f: (d: D) => number) =>
          wired
            .filter((w) => w.def.kind === kind)
            .map((w) => f(w.running.statsData?.(ep) as D))
            .reduce((a, b) => a + b, 0);
        // before any write: only these ticks (each request answered by one of the two clocks)
        for (let i = 0; i < N; i++)
          await nc.request(endpointSubject("a", "clock", "tick"), JSON.stringify({ count: 1 }));
        assert.equal(
          sum("clock", "tick", (d: { ticks: number }) => d.ticks),
          N,
        );
        // every put stamped and published by one of the two watchers
        const published = () =>
          sum("watcher", "status", (d: { config?: { published: number } }) => d.config?.published ?? 0);
        for (let i = 0; i < N; i++) await kvA.put(`two.${i}`, `v${i}`);
        await until(() => published() >= N, { message: "watchers published" });
        // each merge request is applied once, by the endpoint or by the consumer of its journaled copy
        for (let i = 0; i < N; i++) {
          const op = { op: "put", bucket: "config", key: `m.${i}`, value: "x", ts: 1000 + i, node_id: "z" };
          await nc.request(endpointSubject("a", "merger", "merge"), JSON.stringify(op));
        }
        const merged = (d: { applied: number; duplicate: number }) => d.applied + d.duplicate;
        await until(() => sum("merger", "merge", merged) >= 2 * N, { message: "journal consumed" });
        await new Promise((r) => setTimeout(r, 300));
        assert.equal(published(), N);
        assert.equal(
          sum("merger", "merge", (d: { applied: number }) => d.applied),
          N,
        );
        // (plus the site's own ops coming back from the hub: duplicates, counted by the consumer's
        // instance; with one shared counter each instance would show the total and the sums double)
        assert.ok(sum("merger", "merge", merged) >= 2 * N);
        assert.ok(sum("merger", "merge", merged) <= 3 * N);
      } finally {
        for (const w of wired.reverse()) {
          await w.running.stop();
          await w.stop();
        }
        await caches.stop();
        await nc.close();
      }
    },
  );

  it("an agent started with fewer kinds (scale 0 for the others) runs and announces only those", async () => {
    const started = await mesh.startServices("a", "merger=0,reconciler=0");
    assert.deepEqual(
      started.map((i) => i.name),
      ["agent-1"],
    );
    const found = await pingSite(ncs.a!, "a", 500);
    assert.deepEqual(found.map((f) => `${f.name}/${f.instance}`).sort(), [
      `${ServiceName.clock}/agent-1`,
      `${ServiceName.watcher}/agent-1`,
    ]);
    await mesh.stopServices("a");
  });
});
