/**
 * I7 (nothing silent, #12.6): one health model on real servers — every service's STATS data and
 * status endpoint carry its conditions; a store near its limits is raised (error when a full store
 * refuses writes, a warning for a log that drops its oldest); `syncd status` shows a healthy mesh as
 * such and `--check` exits 0 then.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import {
  Conditions,
  type MergerStatusResponse,
  type WatcherStatusResponse,
  checkStores,
  createLogger,
  health,
  kvStream,
  run,
} from "../services/mod.ts";
import { call, until, withLinkedMesh } from "./helpers.ts";
import { collectStats } from "./workload.ts";

const log = createLogger({ service: "test", site: "a", instance: "t", level: "silent" });

describe("I7 health model", () => {
  const { mesh, nc } = withLinkedMesh({ sites: ["a", "b"], serviceArgs: ["--reconcile-interval", "0"] });

  it("every service shows its conditions in STATS data and in its status; a healthy mesh passes --check", async () => {
    for (const svc of ["syncd-clock", "syncd-watcher", "syncd-merger", "syncd-reconciler"]) {
      const stats = await until(async () => {
        const s = await collectStats(nc.a!, svc);
        return s.length >= 2 ? s : null;
      });
      for (const s of stats) {
        const withData = s.endpoints.filter((e) => e.data && typeof e.data === "object");
        assert.ok(withData.length > 0, `${svc}: no STATS data`);
        for (const e of withData)
          assert.ok(Array.isArray((e.data as { conditions?: unknown }).conditions), `${svc}.${e.name}`);
      }
    }
    const w = await call<WatcherStatusResponse>(nc.a!, "a", "watcher", "status");
    const m = await call<MergerStatusResponse>(nc.b!, "b", "merger", "status");
    assert.deepEqual(w.conditions, []);
    assert.deepEqual(m.conditions, []);
    const lines: string[] = [];
    const io = { out: (s: string) => void lines.push(s), err: (s: string) => void lines.push(s) };
    const code = await run(["status", "--check", "--server", mesh.sites.a!.url], io, {});
    assert.equal(code, 0, lines.join("\n"));
    assert.match(lines.join("\n"), /health: ok/);
  });

  it("a store near its limits is raised: error when full means refused writes, warn for a rotating log", async () => {
    const kvm = new Kvm(nc.a!);
    const small = await kvm.create("nearly_full", { max_bytes: 4096, history: 1 });
    const value = "x".repeat(20);
    for (let i = 0; ; i++) {
      try {
        await small.put(`k${i}`, value);
      } catch {
        break;
      }
    }
    const jsm = await jetstreamManager(nc.a!);
    await jsm.streams.add({
      name: "ROTATING_LOG",
      subjects: ["rotating.log"],
      max_msgs: 10,
      discard: "old",
    } as never);
    for (let i = 0; i < 20; i++) await jetstream(nc.a!).publish("rotating.log", "m");
    const usage = await checkStores(jsm, [kvStream("nearly_full"), "ROTATING_LOG", "NO_SUCH_STREAM"], log);
    assert.equal(usage.filter((u) => u.name !== "account storage" && u.name !== "account memory").length, 2);
    const byName = new Map(
      health
        .list()
        .filter((c) => c.code === Conditions.storeFilling)
        .map((c) => [c.subject, c]),
    );
    assert.equal(byName.get(kvStream("nearly_full"))?.severity, "error", JSON.stringify([...byName]));
    assert.equal(byName.get("ROTATING_LOG")?.severity, "warn");
    // emptied: cleared
    await jsm.streams.purge(kvStream("nearly_full"));
    await checkStores(jsm, [kvStream("nearly_full")], log);
    assert.ok(!health.list().some((c) => c.subject === kvStream("nearly_full")));
  });
});
