/**
 * One process per site (issue 13 point 1): the mesh with each site's four services in one agent
 * process (`run.mjs agent`). Still four micro services per site, each answering PING and scalable by
 * starting more instances of one kind; one NATS connection per agent. The core checks run again in
 * this mode: I1 convergence, I2 no echo, I3 no lost write (a concurrent workload with deletes and
 * binary values, checked by checkOutcome) and I6 (the agent killed with kill -9 during the workload).
 * And the counters of two instances wired in one process do not mix; a service answers PING only
 * once its endpoints are in place; a start-up whose requests time out (the site server paused) is
 * tried again instead of exiting; an uncaught NATS error is counted, not fatal.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { Empty } from "@nats-io/nats-core";
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
  isTransientNatsError,
  kvStream,
  loadConfig,
  mergerService,
  metaBucket,
  openSite,
  unannouncedService,
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

  it("I5 a service answers PING only once its endpoints are in place: wired unannounced, then announced", async () => {
    const nc = await mesh.connect("a", { name: "announce" });
    const name = "syncd-announce-test";
    const subject = (e: string) => `announce.test.${e}`;
    try {
      const { service, announce } = unannouncedService(nc, { name, version: VERSION, queue: "syncd" });
      service.addEndpoint("one", { subject: subject("one"), handler: (_e, m) => m.respond("1") });
      await nc.flush();
      // the endpoint answers already; PING, INFO and STATS not yet
      assert.equal((await nc.request(subject("one"), Empty)).string(), "1");
      for (const verb of ["PING", "INFO", "STATS"])
        await assert.rejects(
          nc.request(`$SRV.${verb}.${name}`, Empty, { timeout: 2000 }),
          isTransientNatsError,
        );
      service.addEndpoint("two", { subject: subject("two"), handler: (_e, m) => m.respond("2") });
      await announce();
      const ping = (await nc.request(`$SRV.PING.${name}`, Empty)).json<{ id: string }>();
      const info = (await nc.request(`$SRV.INFO.${name}.${ping.id}`, Empty)).json<{
        endpoints: { name: string }[];
      }>();
      assert.deepEqual(
        info.endpoints.map((e) => e.name),
        ["one", "two"],
      );
      // announcing subscribed no endpoint twice: one request, one more count, one answer
      assert.equal((await nc.request(subject("one"), Empty)).string(), "1");
      const stats = (await nc.request(`$SRV.STATS.${name}.${ping.id}`, Empty)).json<{
        endpoints: { name: string; num_requests: number }[];
      }>();
      assert.equal(stats.endpoints.find((e) => e.name === "one")?.num_requests, 2);
      await service.stop();
    } finally {
      await nc.close();
    }
  });

  it(
    "I5 the agent's first PING answer of each service comes with every endpoint in INFO",
    { timeout: 120_000 },
    async () => {
      const nc = await mesh.connect("a", { name: "first-ping" });
      const kinds = [ServiceName.clock, ServiceName.watcher, ServiceName.merger, ServiceName.reconciler];
      /** INFO's endpoints of each service, asked right after its first PING answer */
      const first = new Map<string, string[]>();
      const info = async (svc: string, id: string) =>
        (await nc.request(`$SRV.INFO.${svc}.${id}`, Empty, { timeout: 5000 }))
          .json<{ endpoints: { name: string }[] }>()
          .endpoints.map((e) => e.name)
          .sort();
      let polling = true;
      const poll = (async () => {
        while (polling && first.size < kinds.length) {
          await Promise.all(
            kinds
              .filter((k) => !first.has(k))
              .map(async (k) => {
                const m = await nc.request(`$SRV.PING.${k}`, Empty, { timeout: 200 }).catch(() => null);
                if (m && !first.has(k)) first.set(k, await info(k, m.json<{ id: string }>().id));
              }),
          );
        }
      })();
      try {
        await mesh.startServices("a");
        await until(() => first.size === kinds.length, { message: "every service answered PING" });
        const found = await pingSite(nc, "a", 500);
        for (const k of kinds) {
          const f = found.find((x) => x.name === k);
          assert.ok(f, `${k} answers PING`);
          const all = await info(k, f.id);
          assert.ok(all.length > 0, `${k} has endpoints`);
          assert.deepEqual(first.get(k), all, `${k}: INFO at its first PING answer lists every endpoint`);
        }
      } finally {
        polling = false;
        await poll;
        await mesh.stopServices("a");
        await nc.close();
      }
    },
  );

  it(
    "I6 requests of the agent's start-up that time out (site server paused while the services wire) are retried: no exit, ready after",
    { timeout: 120_000 },
    async () => {
      const server = mesh.topology.site("a");
      const pause = () => process.kill(server.pid!, "SIGSTOP");
      const resume = () => process.kill(server.pid!, "SIGCONT");
      const starting = mesh.startServices("a");
      const agent = mesh.services("a").find((i) => i.kind === "agent");
      assert.ok(agent && agent.pid > 0, "the agent runs");
      const log = () => readFileSync(agent.logFile, "utf8");
      const mark = log().length;
      const lines = () => log().slice(mark).split("\n");
      const ready = (svc: string) => (l: string) =>
        l.includes(`"svc":"${svc}"`) && l.includes(`"msg":"ready"`);
      const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
      try {
        // the server runs in short slices (every request of the agent waits for one) until the clock
        // is wired; then it stays paused while the other services wire, past twice the JetStream API
        // timeout (5 s): a request of the wiring times out
        for (let i = 0; i < 10_000; i++) {
          pause();
          await sleep(20);
          if (lines().some(ready(ServiceName.clock)) || !agent.alive()) break;
          resume();
          await sleep(2);
        }
        assert.ok(lines().some(ready(ServiceName.clock)), `the clock wired:\n${agent.logTail(20)}`);
        assert.ok(!lines().some(ready(ServiceName.reconciler)), "paused before the last service wired");
        await sleep(12_000);
      } finally {
        resume();
      }
      try {
        await starting;
        assert.ok(agent.alive(), `the agent still runs:\n${agent.logTail(20)}`);
        assert.ok(!lines().some((l) => l.includes("uncaught")), agent.logTail(20));
        assert.ok(
          lines().some((l) => l.includes("cannot wire the service yet") && l.includes("TimeoutError")),
          `a wiring request timed out and was retried:\n${agent.logTail(20)}`,
        );
        const found = await pingSite(ncs.a!, "a", 500);
        assert.deepEqual(found.map((f) => f.name).sort(), [
          ServiceName.clock,
          ServiceName.merger,
          ServiceName.reconciler,
          ServiceName.watcher,
        ]);
      } finally {
        await mesh.stopServices("a");
      }
    },
  );

  it("I6 an uncaught NATS error is counted and the process goes on; any other uncaught error still exits", async () => {
    /** the fixture service's process: its output so far, its exit */
    const start = (env: NodeJS.ProcessEnv) => {
      const p = spawn(
        process.execPath,
        [
          "--import",
          "tsx",
          "test/fixtures/throwing-service.ts",
          ...["--site", "a", "--nats-url", mesh.sites.a!.url, "--http-port", "0", "--http-host", "127.0.0.1"],
        ],
        { env: { ...process.env, ...env, NODE_TEST_CONTEXT: undefined, LOG_LEVEL: "info" } },
      );
      let out = "";
      const add = (d: Buffer) => {
        out += d;
      };
      p.stdout.on("data", add);
      p.stderr.on("data", add);
      const exited = new Promise<number | null>((r) => p.on("exit", (code) => r(code)));
      return { p, out: () => out, exited };
    };
    const going = start({});
    try {
      await until(() => going.out().includes("uncaught NATS error"), {
        message: "the uncaught NATS error logged",
      });
      const port = Number(/"port":(\d+),"msg":"http port open/.exec(going.out())?.[1]);
      const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      assert.match(metrics, /syncd_process_errors_total\{[^}]*origin="uncaught"[^}]*\} 1\n/);
      assert.equal(going.p.exitCode, null, `the process goes on:\n${going.out()}`);
      assert.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200);
    } finally {
      going.p.kill("SIGTERM");
      await going.exited;
    }
    const bug = start({ THROW_BUG: "1" });
    assert.equal(await bug.exited, 1, bug.out());
    assert.match(bug.out(), /uncaught exception, exiting/);
  });

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
