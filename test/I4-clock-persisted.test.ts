/**
 * The site clock (DESIGN §1): persisted, never back across restarts, strictly increasing with
 * several instances; HLC by default, Lamport with --clock lamport; far-future ts refused.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import type { NatsConnection } from "@nats-io/nats-core";
import { type ClockNowResponse, type ClockTickResponse, ServiceReplyError } from "../services/mod.ts";
import { type Mesh, startMesh } from "./harness/mesh.ts";
import { call } from "./helpers.ts";

const tick = async (nc: NatsConnection, count = 1) =>
  call<ClockTickResponse>(nc, "a", "clock", "tick", { count });

describe("I4 clock: persisted, never back", () => {
  const meshes: Mesh[] = [];
  after(async () => {
    await Promise.all(meshes.map((m) => m.stop()));
  });

  it("HLC: ticks follow physical time, never go back across a restart, and several instances never reissue", async () => {
    const mesh = await startMesh({ sites: ["a"], scale: { clock: 2, watcher: 1, merger: 1, reconciler: 1 } });
    meshes.push(mesh);
    const nc = await mesh.connect("a");
    const t0 = Date.now();
    const first = await tick(nc, 5);
    const t1 = Date.now();
    assert.equal(first.mode, "hlc");
    // bracketed by the times measured around the request (slack for blocks reserved ahead): a busy
    // machine only widens [t0, t1]
    const ms = Math.floor(first.start / 1000);
    assert.ok(ms >= t0 - 5_000 && ms <= t1 + 5_000, `HLC ts ${first.start} is not physical_ms*1000+logical`);
    // concurrent ticks over two instances: all distinct, each block contiguous
    const blocks = await Promise.all(Array.from({ length: 200 }, () => tick(nc, 3)));
    const seen = new Set<number>();
    for (const b of [first, ...blocks]) for (let t = b.start; t < b.start + b.count; t++) seen.add(t);
    assert.equal(seen.size, 5 + 200 * 3, "a timestamp was handed out twice");
    const high = Math.max(...seen);
    // restart every clock instance: the persisted mark carries over
    for (const s of mesh.services("a").filter((s) => s.kind === "clock")) await s.restart();
    await mesh.waitServices("a");
    const now = await call<ClockNowResponse>(nc, "a", "clock", "now");
    assert.ok(now.ts >= high, "persisted mark went back");
    const after = await tick(nc);
    assert.ok(after.start > high, "a tick after the restart is not above every earlier one");
  });

  it("HLC: a ts far ahead of physical time is refused and does not advance the clock", async () => {
    const mesh = meshes[0]!;
    const nc = await mesh.connect("a");
    const before = await call<ClockNowResponse>(nc, "a", "clock", "now");
    const future = (Date.now() + 3_600_000) * 1000;
    await assert.rejects(call(nc, "a", "clock", "observe", { ts: future }), (err: unknown) => {
      assert.ok(err instanceof ServiceReplyError);
      assert.equal(err.status, 422);
      assert.match(err.message, /ahead/);
      return true;
    });
    const now = await call<ClockNowResponse>(nc, "a", "clock", "now");
    assert.ok(now.ts < future && now.ts >= before.ts);
  });

  it("Lamport (--clock lamport): a plain counter, observe moves it past received ts", async () => {
    const mesh = await startMesh({ sites: ["a"], clock: "lamport" });
    meshes.push(mesh);
    const nc = await mesh.connect("a");
    const a = await tick(nc);
    assert.equal(a.mode, "lamport");
    assert.ok(a.start < 1_000_000, "not a physical time");
    await call(nc, "a", "clock", "observe", { ts: a.start + 100 });
    const b = await tick(nc);
    assert.equal(b.start, a.start + 101);
  });
});
