/**
 * I6 crash safety (DESIGN §4): `kill -9` of any service instance at any moment loses nothing and
 * redelivery is harmless. A write workload runs on two sites (2 mergers, 2 watchers, 2 clocks and a
 * reconciler each) while instances of every kind are killed with SIGKILL and started again at
 * random (seeded: CHAOS_SEED=<n> replays the same decisions); after it every site holds the LWW
 * winner of the ops actually published, no local write is published twice, and none is lost.
 * And a site's watchers killed while writes go on: what was written meanwhile is published after
 * the restart, exactly once, and nothing is delivered or published again. Some of the stops are
 * graceful (SIGTERM) rather than kill -9.
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import {
  Durables,
  ServiceName,
  Streams,
  createLogger,
  ensureConsumer,
  kvStream,
  opsSubject,
  runConsumer,
} from "../services/mod.ts";
import { type ServiceInstance, eventually } from "./harness/mesh.ts";
import { HUB_DOMAIN, quiet, streamCount, withLinkedMesh } from "./helpers.ts";
import { prng } from "./sim/sched.ts";
import {
  type WriteRecord,
  checkOutcome,
  collectStats,
  explainKey,
  keySet,
  putWrite,
  readStream,
  runWorkload,
  seedFromEnv,
  soakMs,
  uniqueValue,
} from "./workload.ts";

const SITES = ["a", "b"];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("I6 crash safety", () => {
  const { mesh, nc, kv } = withLinkedMesh({
    sites: SITES,
    scale: "merger=2,watcher=2,clock=2",
    // anti-entropy off: what is lost on the op path must show, not be repaired behind our back
    serviceArgs: ["--reconcile-interval", "0"],
    readyTimeoutMs: 60_000,
    linkTimeoutMs: 30_000,
  });
  let jsm: JetStreamManager;
  const writes: WriteRecord[] = [];

  before(async () => {
    jsm = await jetstreamManager(nc.a!);
  });

  /** Sequential writes of distinct keys at a site until stopped. */
  const distinctWriter = (site: string, prefix: string, pauseMs: number) => {
    let stop = false;
    const mine: WriteRecord[] = [];
    const done = (async () => {
      for (let n = 0; !stop; n++) {
        mine.push(
          await putWrite(kv[site]!, site, `${prefix}.${n}`, uniqueValue(site, 900_000 + n, n % 9 === 0)),
        );
        if (pauseMs) await sleep(pauseMs);
      }
    })();
    return {
      mine,
      stop: async () => {
        stop = true;
        await done;
        return mine;
      },
    };
  };

  /** For a failure message: the watcher consumers, and what the sites know of some unpublished writes. */
  const diagnose = async (unpublished: WriteRecord[]): Promise<string> => {
    const lines: string[] = [];
    for (const s of SITES) {
      const m = await jetstreamManager(nc[s]!);
      const ci = await m.consumers.info(kvStream("config"), Durables.watcher(s, "config"));
      lines.push(
        `site ${s} watcher consumer: pending ${ci.num_pending}, ack pending ${ci.num_ack_pending}, redelivered ${ci.num_redelivered}, delivered ${JSON.stringify(ci.delivered)}, ack floor ${JSON.stringify(ci.ack_floor)}`,
      );
    }
    for (const u of unpublished.slice(0, 8))
      lines.push(
        `${u.site} rev ${u.rev} issued ${new Date(u.at).toISOString()}: ${await explainKey(nc[u.site]!, u.key)}`,
      );
    return lines.join("\n");
  };

  /**
   * For a failure message: where the op of each distinct-key write that did not arrive at a site
   * stands on its way (origin's log, the hub's aggregate, the site's inbound stream), and the site's
   * service log lines that name the key.
   */
  const tracePaths = async (): Promise<string> => {
    const lines: string[] = [];
    const last = new Map<string, WriteRecord>();
    for (const x of writes) if (x.key.startsWith("i6.u.")) last.set(x.key, x);
    const at = async (m: JetStreamManager, stream: string, subj: string) => {
      try {
        const msg = await m.streams.getMessage(stream, { last_by_subj: subj });
        return `${stream}#${msg?.seq} src=${msg?.header?.get("Nats-Stream-Source") ?? "-"} ${msg?.time.toISOString()}`;
      } catch (err) {
        return `${stream}: ${(err as Error).message}`;
      }
    };
    for (const s of SITES) {
      const missing: WriteRecord[] = [];
      for (const x of last.values())
        if (x.site !== s && !x.deleted && (await kv[s]!.get(x.key))?.operation !== "PUT") missing.push(x);
      const m = await jetstreamManager(nc[s]!);
      for (const x of missing.slice(0, 5)) {
        const subj = opsSubject(x.site, "config", x.key);
        const origin = await jetstreamManager(nc[x.site]!);
        const hub = await jetstreamManager(nc[s]!, { domain: HUB_DOMAIN });
        lines.push(
          `${s} lacks ${x.key} (written at ${x.site} ${new Date(x.at).toISOString()}): ${await at(origin, Streams.out(x.site), subj)} | ${await at(hub, Streams.hub, subj)} | ${await at(m, Streams.in(s), subj)}`,
        );
        lines.push(
          ...mesh
            .logs(s, 100_000)
            .split("\n")
            .filter((l) => l.includes(x.key))
            .slice(0, 10),
        );
      }
      if (missing.length > 0) {
        const ci = await m.consumers.info(Streams.in(s), Durables.merger);
        lines.push(
          `${s} merger consumer on ${Streams.in(s)}: ${JSON.stringify({ d: ci.delivered, a: ci.ack_floor, p: ci.num_pending, ap: ci.num_ack_pending, r: ci.num_redelivered })}`,
        );
      }
    }
    return lines.join("\n");
  };

  it("I6 kill -9 of random service instances (every kind) during a write workload: nothing lost, converged, nothing published twice", async () => {
    const seed = seedFromEnv("CHAOS_SEED");
    const random = prng(seed ^ 0x5eed);
    const maxKills = Number(process.env.CHAOS_KILLS ?? 20);
    const MIN_KILLS = Math.min(5, maxKills);
    const t0 = Date.now();
    const events: string[] = [];
    const log = (e: string) => events.push(`+${Date.now() - t0}ms ${e}`);
    const down = new Map<ServiceInstance, number>();
    let chaosOn = true;
    let kills = 0;
    const chaos = (async () => {
      while (chaosOn && kills < maxKills) {
        await sleep(300 + random() * 500);
        if (!chaosOn) break;
        for (const [inst, at] of down) {
          if (Date.now() >= at) {
            down.delete(inst);
            inst.spawn();
            log(`start ${inst.site}/${inst.name}`);
          }
        }
        const candidates = SITES.flatMap((s) => mesh.services(s)).filter((i) => i.alive());
        const victim = candidates[Math.floor(random() * candidates.length)];
        if (!victim) continue;
        // mostly kill -9; now and then a graceful stop (SIGTERM), which must lose nothing either
        const graceful = random() < 0.2;
        await (graceful ? victim.stop() : victim.kill9());
        kills++;
        down.set(victim, Date.now() + 200 + random() * 1300);
        log(`${graceful ? "SIGTERM" : "kill -9"} ${victim.site}/${victim.name}`);
      }
    })();
    // next to the overlapping workload, one writer per site of distinct keys: each must be
    // published exactly once whatever was killed
    const distinct = SITES.map((s) => distinctWriter(s, `i6.u.${s}`, 5));
    let w: Awaited<ReturnType<typeof runWorkload>>;
    try {
      w = await runWorkload({
        ncs: nc,
        keys: keySet("i6", 40),
        writersPerSite: 3,
        durationMs: soakMs(6000),
        // a cap against runaway only: a fast machine wrote 5 000 per site before a slow chaos made 5 kills
        maxWritesPerSite: 20_000,
        seed,
        // the writes go on until the chaos made its kills, however slow the machine is
        until: () => kills >= MIN_KILLS,
      });
    } finally {
      chaosOn = false;
      await chaos;
      for (const d of distinct) writes.push(...(await d.stop()));
    }
    writes.push(...w.writes);
    for (const inst of down.keys()) {
      inst.spawn();
      log(`start ${inst.site}/${inst.name}`);
    }
    await mesh.waitServices();
    log("all instances answer PING");
    const tq = Date.now();
    try {
      // a killed instance's unacknowledged messages come back after the consumers' ack wait (30 s)
      await quiet(nc, { timeout: 90_000 });
    } catch (err) {
      throw new Error(
        `${(err as Error).message}\nseed ${seed}\n${events.join("\n")}\n${mesh.logs(undefined, 15)}`,
      );
    }
    const report = await checkOutcome({ ncs: nc, writes, allowBeatenUnpublished: true });
    console.log(
      `# ${writes.length} writes (${w.writes.length} on the shared keys) in ${w.elapsedMs} ms, ${kills} kills, quiet ${Date.now() - tq} ms after the restarts; ops ${JSON.stringify(report.opsPerSite)}; ${report.unpublishedLast.length} last writes not published`,
    );
    const diag =
      report.problems.length > 0 ? `${await diagnose(report.unpublishedLast)}\n${await tracePaths()}` : "";
    assert.deepEqual(
      report.problems,
      [],
      `CHAOS_SEED=${seed}\n${report.problems.join("\n")}\nchaos:\n${events.join("\n")}\n${diag}`,
    );
    assert.ok(kills >= MIN_KILLS, `only ${kills} kills (the workload hit maxWritesPerSite first)`);
    // every distinct-key write exactly once (checkOutcome: the last write of a key is published,
    // no message id twice; a distinct key's only write is its last)
    const outA = await readStream(nc.a!, Streams.out("a"));
    const ids = new Set(outA.map((m) => m.msgId));
    const missing = writes.filter(
      (x) => x.site === "a" && x.key.startsWith("i6.u.") && !ids.has(`a.config.${x.rev}`),
    );
    assert.deepEqual(missing, [], "distinct-key writes of a not published");
  });

  it("I6 the watchers of a site killed while writes go on: what was written meanwhile is published after the restart, exactly once; nothing is delivered or published again", async () => {
    await quiet(nc, { timeout: 60_000 });
    const before0 = await streamCount(jsm, Streams.out("a"));
    const watchers = mesh.services("a").filter((i) => i.kind === "watcher");
    assert.equal(watchers.length, 2);
    const consumer = () => jsm.consumers.info(kvStream("config"), Durables.watcher("a", "config"));
    const wr = distinctWriter("a", "i6.w", 3);
    await sleep(400);
    // kill -9 both watchers between two writes (the consumer caught up: a crash mid-stamp is the
    // chaos test's part), keep writing while no watcher runs, start them again, keep writing
    const first = await wr.stop();
    await quiet(nc, { timeout: 60_000 });
    await Promise.all(watchers.map((i) => i.kill9()));
    const killedAt = Date.now();
    const wr2 = distinctWriter("a", "i6.w2", 3);
    await sleep(1000);
    // not handled while down: waiting, or delivered to the dead watchers' outstanding pulls and
    // never acked (those absorb up to a pull's batch each: num_pending alone was once 0)
    const down = await consumer();
    const lagWhileDown = down.num_pending + down.num_ack_pending;
    for (const i of watchers) i.spawn();
    await mesh.waitServices("a");
    const restartedAt = Date.now();
    await sleep(500);
    const second = await wr2.stop();
    const mine = [...first, ...second];
    writes.push(...mine);
    const tq = Date.now();
    await quiet(nc, { timeout: 60_000 });
    // what the restarted watchers did (STATS data: this instance's counts since it started)
    const counts = (await collectStats(nc.a!, ServiceName.watcher))
      .filter((st) => st.metadata?.site === "a")
      .map((st) => {
        const data = st.endpoints.find((e) => e.name === "status")?.data as
          | Record<string, Record<string, number>>
          | undefined;
        return data?.config ?? {};
      });
    const sum = (k: string) => counts.reduce((n, c) => n + (c[k] ?? 0), 0);
    const whileDown = second.filter((x) => x.at >= killedAt && x.at < restartedAt).length;
    console.log(
      `# ${mine.length} distinct writes, ${whileDown} while no watcher ran (lag ${lagWhileDown}); restarted watchers: ${JSON.stringify(counts)}; quiet ${Date.now() - tq} ms after the last write`,
    );
    assert.ok(whileDown >= 20, `only ${whileDown} writes while the watchers were down`);
    assert.ok(lagWhileDown > 0, "the watchers' consumer had no backlog while they were down");
    const out = await readStream(nc.a!, Streams.out("a"));
    const count = new Map<string, number>();
    for (const m of out) count.set(m.msgId ?? "", (count.get(m.msgId ?? "") ?? 0) + 1);
    const notOnce = mine.filter((x) => count.get(`a.config.${x.rev}`) !== 1);
    assert.deepEqual(
      notOnce.map((x) => `${x.key} rev ${x.rev}: ${count.get(`a.config.${x.rev}`) ?? 0}`),
      [],
      "each write published exactly once",
    );
    assert.equal(out.length, before0 + mine.length, "SYNCD_OUT_a grew by exactly the number of local writes");
    // the restarted watchers resumed where the consumer stood: they handled the new entries only
    assert.equal(counts.length, 2, "STATS of both watchers of a");
    assert.equal(sum("published"), second.length, "the restarted watchers published exactly the new writes");
    assert.equal(
      sum("republished") + sum("skipped_superseded"),
      0,
      "old entries handled again after the restart",
    );
    const report = await checkOutcome({ ncs: nc, writes, allowBeatenUnpublished: true });
    assert.deepEqual(report.problems, [], report.problems.join("\n"));
  });

  it("I6 a graceful restart (SIGTERM) of a watcher while writes go on holds nothing back for the ack wait", async () => {
    await quiet(nc, { timeout: 60_000 });
    const watcher = mesh.services("a").find((i) => i.kind === "watcher")!;
    const wr = distinctWriter("a", "i6.g", 0);
    await sleep(500);
    const tr = Date.now();
    await watcher.restart();
    const restartMs = Date.now() - tr;
    await sleep(300);
    const mine = await wr.stop();
    writes.push(...mine);
    // 10 s is plenty for a few hundred writes; the ack wait is 30 s
    const t0 = Date.now();
    await quiet(nc, { timeout: 10_000 });
    console.log(
      `# ${mine.length} writes; restart ${restartMs} ms; quiet ${Date.now() - t0} ms after the last write`,
    );
    const out = new Set((await readStream(nc.a!, Streams.out("a"))).map((m) => m.msgId));
    const missing = mine.filter((x) => !out.has(`a.config.${x.rev}`));
    assert.deepEqual(missing, [], "writes made around the restart not published");
  });

  it("I6 a consumer loop stopped while a write arrives hands it back at once (a leaf-node server serves a pull for 2 s after its subscriber left)", async () => {
    const stream = "I6_STOP";
    await jsm.streams.add({ name: stream, subjects: ["i6stop.>"] });
    try {
      await ensureConsumer(jsm, stream, "d", { deliver: "all" });
      const js = jetstream(nc.a!);
      const log = createLogger({ service: "test", site: "a", instance: "t", level: "silent" });
      const handled: number[] = [];
      const loop = () =>
        runConsumer({
          js,
          stream,
          durable: "d",
          concurrency: 4,
          keyOf: (m) => m.subject,
          handle: async (m) => {
            handled.push(m.seq);
            return { ack: true };
          },
          log,
        });
      const first = await loop();
      await js.publish("i6stop.a", "1");
      await eventually(() => assert.deepEqual(handled, [1]));
      // the loop has a pull out (taken by the server moments ago); a write comes while it stops,
      // another once it stopped
      const stopping = first.stop();
      await js.publish("i6stop.b", "2");
      await stopping;
      await js.publish("i6stop.c", "3");
      // the server has placed it: delivered (to a pull of the stopped loop), or no pull is waiting
      await eventually(async () => {
        const ci = await jsm.consumers.info(stream, "d");
        assert.ok(ci.delivered.stream_seq >= 3 || ci.num_waiting === 0);
      });
      // a nak'd message counts as ack pending until it is delivered again: what shows is the
      // restarted loop getting both well before the ack wait (30 s)
      const second = await loop();
      await eventually(() => assert.deepEqual(handled, [1, 2, 3]), {
        timeout: 5000,
        message: "the writes made while and after the loop stopped, handled by the restarted loop",
      });
      await second.stop();
    } finally {
      await jsm.streams.delete(stream);
    }
  });
});
