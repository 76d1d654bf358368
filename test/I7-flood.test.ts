/**
 * I7 under a flood: 10 000 bad ops interleaved with 1 000 good ones at site a. Every good op is
 * applied at every site, the bad ops are dead-lettered, and the flooded site's own four services
 * (PING filtered by the replying instance's `site`, so an idle site cannot answer for it) keep
 * answering while the flood is still pending in the merger's consumer: a property that does not
 * depend on how fast the machine is (no time threshold; the ping's timeout is only a give-up).
 * Memory under load is the benchmark's business (bench/), not a pass/fail check here.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { type NatsConnection, createInbox } from "@nats-io/nats-core";
import { Durables, OPS_INGRESS, ServiceName, Streams, loadConfig } from "../services/mod.ts";
import { contents, quiet, until, withLinkedMesh } from "./helpers.ts";

const BAD = Number(process.env.FLOOD_BAD ?? 10_000);
const GOOD = Number(process.env.FLOOD_GOOD ?? 1_000);
const KINDS = Object.values(ServiceName);

/** $SRV.PING of one service kind, answered by an instance of `site` (replies of other sites ignored). */
async function pingSite(nc: NatsConnection, name: string, site: string, giveUpMs = 60_000): Promise<void> {
  const inbox = createInbox();
  const sub = nc.subscribe(inbox);
  const timer = setTimeout(() => sub.unsubscribe(), giveUpMs);
  nc.publish(`$SRV.PING.${name}`, "", { reply: inbox });
  try {
    for await (const m of sub) {
      if (m.json<{ metadata?: Record<string, string> }>().metadata?.site === site) return;
    }
  } finally {
    clearTimeout(timer);
    sub.unsubscribe();
  }
  throw new Error(`${name} of site ${site} did not answer PING in ${giveUpMs} ms`);
}

describe("I7 flood of bad ops", () => {
  const { mesh, nc } = withLinkedMesh({
    sites: ["a", "b"],
    serviceArgs: ["--reconcile-interval", "0", "--log-level", "error"],
  });

  it(`I7 ${BAD} bad ops among ${GOOD} good ones: every good one applied everywhere; site a's four services answer PING while the flood is pending`, async (t) => {
    const bads = [
      "garbage",
      '{"op":"put"}',
      '{"op":"put","bucket":"config","key":"a..b","value":"v","ts":1,"node_id":"x"}',
      '{"op":"put","bucket":"config","key":"k","value":"v","ts":-1,"node_id":"x"}',
      '{"op":"put","bucket":"config","key":"k","value":"@@","encoding":"base64","ts":1,"node_id":"x"}',
      '{"op":"nuke","bucket":"config","key":"k","ts":1,"node_id":"x"}',
      // (an op stamped far ahead is parked, not dead-lettered: test/I7-clock-far-off.test.ts)
    ];
    const jsm = await jetstreamManager(nc.a!);
    // the flood lands in the ingress stream (SYNCD_IN_a); the good ops also come back through the FEED
    const pending = async () => {
      let n = 0;
      for (const stream of [Streams.ingress("a"), Streams.in("a")]) {
        const ci = await jsm.consumers.info(stream, Durables.merger);
        n += ci.num_pending + ci.num_ack_pending;
      }
      return n;
    };
    // rounds in which every kind of site a answered, and how much of the flood was pending after it
    const answeredWhilePending: number[] = [];
    let pinging = true;
    const pinger = (async () => {
      while (pinging) {
        await Promise.all(KINDS.map((k) => pingSite(nc.a!, k, "a")));
        const left = await pending();
        if (left > 0) answeredWhilePending.push(left);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    const perGood = Math.floor(BAD / GOOD);
    const CHUNK = Math.max(1, Math.ceil(GOOD / 10));
    let good = 0;
    let bad = 0;
    const publish = async (goods: number) => {
      for (let i = 0; i < goods; i++, good++) {
        for (let j = 0; j < perGood; j++, bad++) nc.a!.publish(OPS_INGRESS, bads[(good + j) % bads.length]!);
        nc.a!.publish(
          OPS_INGRESS,
          JSON.stringify({
            op: "put",
            bucket: "config",
            key: `flood.${good}`,
            value: `g${good}`,
            ts: 1000 + good,
            node_id: "flooder",
          }),
        );
        if (good % 50 === 0) await nc.a!.flush();
      }
      await nc.a!.flush();
    };
    await publish(GOOD);
    // on a loaded host the flood may drain before a round of PINGs comes back: keep a backlog (up
    // to 4× the flood) until three rounds were answered with ops pending, or give up and fail below
    for (let more = 0; more < 3 * GOOD && answeredWhilePending.length < 3; more += CHUNK) {
      while ((await pending()) > perGood * CHUNK && answeredWhilePending.length < 3)
        await new Promise((r) => setTimeout(r, 100));
      if (answeredWhilePending.length < 3) await publish(CHUNK);
    }
    const kvb = await mesh.kv("b");
    await until(async () => (await contents(kvb)).size >= good, {
      timeout: 120_000,
      message: "good ops missing at b",
    });
    pinging = false;
    await pinger;
    await quiet({ a: nc.a!, b: nc.b! }, { timeout: 60_000 });
    const ca = await contents(await mesh.kv("a"));
    for (let g = 0; g < good; g++) assert.equal(ca.get(`flood.${g}`), `g${g}`);
    const dlq = (await jsm.streams.info(Streams.dlq("a"))).state.messages;
    const cap = loadConfig(["--site", "a"], {}).limits.dlqMaxMsgs;
    assert.equal(
      dlq,
      Math.min(bad, cap),
      "every bad op dead-lettered (the stream keeps the last --dlq-max-msgs)",
    );
    assert.ok(
      answeredWhilePending.length > 0,
      "no round of PINGs to site a's four services was answered while the flood was pending",
    );
    t.diagnostic(
      `${answeredWhilePending.length} PING rounds answered with ops pending (largest backlog ${Math.max(...answeredWhilePending)}); ${bad} bad and ${good} good ops`,
    );
  });
});
