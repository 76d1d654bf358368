/**
 * I7 under a flood: 10 000 bad ops interleaved with 1 000 good ones. Every good op is applied at
 * every site, the services answer PING within a second throughout, the bad ops are dead-lettered
 * (bounded stream) and the merger's memory stays bounded.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/nats-core";
import { OPS_INGRESS, ServiceName, Streams } from "../services/lib/subjects.ts";
import type { Mesh } from "./harness/mesh.ts";
import { contents, quiet, startLinkedMesh, until } from "./helpers.ts";

const BAD = Number(process.env.FLOOD_BAD ?? 10_000);
const GOOD = Number(process.env.FLOOD_GOOD ?? 1_000);

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : 0;
}

describe("I7 flood of bad ops", () => {
  let mesh: Mesh;
  let nc: Record<string, NatsConnection> = {};

  before(async () => {
    ({ mesh, nc } = await startLinkedMesh({
      sites: ["a", "b"],
      serviceArgs: ["--reconcile-interval", "0", "--log-level", "error"],
    }));
  });
  after(async () => {
    await mesh?.stop();
  });

  it(`I7 ${BAD} bad ops among ${GOOD} good ones: every good one applied everywhere, PING < 1 s throughout`, async () => {
    const bads = [
      "garbage",
      '{"op":"put"}',
      '{"op":"put","bucket":"config","key":"a..b","value":"v","ts":1,"node_id":"x"}',
      '{"op":"put","bucket":"config","key":"k","value":"v","ts":-1,"node_id":"x"}',
      '{"op":"put","bucket":"config","key":"k","value":"@@","encoding":"base64","ts":1,"node_id":"x"}',
      '{"op":"nuke","bucket":"config","key":"k","ts":1,"node_id":"x"}',
      `{"op":"put","bucket":"config","key":"k","value":"v","ts":${(Date.now() + 86_400_000) * 1000},"node_id":"x"}`,
    ];
    let slowest = 0;
    let pinging = true;
    const pinger = (async () => {
      while (pinging) {
        const t0 = Date.now();
        await nc.a!.request(`$SRV.PING.${ServiceName.merger}`, "", { timeout: 1000 });
        slowest = Math.max(slowest, Date.now() - t0);
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    const perGood = Math.floor(BAD / GOOD);
    for (let g = 0; g < GOOD; g++) {
      for (let i = 0; i < perGood; i++) nc.a!.publish(OPS_INGRESS, bads[(g + i) % bads.length]!);
      nc.a!.publish(
        OPS_INGRESS,
        JSON.stringify({
          op: "put",
          bucket: "config",
          key: `flood.${g}`,
          value: `g${g}`,
          ts: 1000 + g,
          node_id: "flooder",
        }),
      );
      if (g % 50 === 0) await nc.a!.flush();
    }
    await nc.a!.flush();
    const kvb = await mesh.kv("b");
    await until(async () => (await contents(kvb)).size >= GOOD, {
      timeout: 120_000,
      message: "good ops missing at b",
    });
    pinging = false;
    await pinger;
    await quiet({ a: nc.a!, b: nc.b! }, { timeout: 60_000 });
    const ca = await contents(await mesh.kv("a"));
    for (let g = 0; g < GOOD; g++) assert.equal(ca.get(`flood.${g}`), `g${g}`);
    assert.ok(slowest < 1000, `PING took ${slowest} ms`);
    const dlq = (await (await jetstreamManager(nc.a!)).streams.info(Streams.dlq("a"))).state.messages;
    assert.equal(dlq, Math.min(BAD, perGood * GOOD), "every bad op dead-lettered");
    const merger = mesh.services("a").find((s) => s.kind === "merger")!;
    assert.ok(rssMb(merger.pid) < 250, `merger RSS ${rssMb(merger.pid)} MB`);
  });
});
