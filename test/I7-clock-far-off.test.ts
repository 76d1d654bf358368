import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import {
  type ClockDeps,
  ClockMode,
  type ClockNowResponse,
  HLC_TICKS_PER_MS,
  LAMPORT_CATCH_UP_MS,
  type MergerStatusResponse,
  Observer,
  Serial,
  Streams,
  Ticker,
  isSyncdError,
  observeTs,
  run,
} from "../services/mod.ts";
import { call, until, withLinkedMesh } from "./helpers.ts";
/**
 * I7 bad input, the clock (#12.4): no op can push a site's clock to its end, and a ts the clock
 * refuses is not a verdict but a wait, the same at every site:
 *
 * - the README's hand-made op example works as written (run with the real `nats` CLI);
 * - HLC: an op further ahead than `--max-clock-skew` is parked (not dead-lettered, not applied),
 *   counted, raised as CLOCK_SKEW_REFUSED (`syncd status --check` exits 1), and applied at every
 *   site once it is acceptable;
 * - Lamport: an op stamped 2^53−1 is refused (`--max-clock-jump`) and parked; the site's clock stays
 *   far from its end and its writes still replicate; an op within the jump is applied;
 * - a Lamport clock behind an op moves towards it by at most one jump a minute: it is refused for
 *   a while, never for ever;
 * - skewed hosts: a ticker and an observer on hosts whose wall clock is 50 s ahead of / behind the
 *   clock service's work (blocks are usable, observed ts are past the clock's next tick), and a
 *   ticker whose blocks are always too old on arrival still hands out timestamps.
 */
import { NATS_CLI, NATS_CLI_MISSING } from "./natscli.ts";
import { publishHandMade } from "./workload.ts";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const SKEW_MS = 2000;

/** Run `syncd` in this process; returns the exit code and what it printed. */
async function syncd(args: string[]): Promise<{ code: number; out: string }> {
  const lines: string[] = [];
  const io = { out: (s: string) => void lines.push(s), err: (s: string) => void lines.push(s) };
  const code = await run(args, io, {});
  return { code, out: lines.join("\n") };
}

/** Wait until site a's merger has parked an op; its status then. */
function parked(nc: NatsConnection): Promise<MergerStatusResponse> {
  return until(
    async () => {
      const s = await call<MergerStatusResponse>(nc, "a", "merger", "status");
      return (s.counts.parked ?? 0) > 0 ? s : null;
    },
    { message: "the op was not parked" },
  );
}

async function dlqCount(nc: NatsConnection, site: string): Promise<number> {
  const jsm = await jetstreamManager(nc);
  try {
    return (await jsm.streams.info(Streams.dlq(site))).state.messages;
  } catch {
    return 0;
  }
}

describe("I7 clock far off", () => {
  // HLC, for the HLC cases and the skewed hosts
  const hlc = withLinkedMesh({
    sites: ["a", "b"],
    serviceArgs: ["--max-clock-skew", String(SKEW_MS), "--reconcile-interval", "0"],
  });

  describe("HLC", () => {
    const { mesh, nc } = hlc;

    it("the README's hand-made op example works as written", async (t) => {
      if (!NATS_CLI) return t.skip(NATS_CLI_MISSING || "no nats CLI");
      const readme = readFileSync(path.join(REPO, "README.md"), "utf8");
      const block = /Anyone may send one by hand[^`]*```sh\n([\s\S]*?)```/.exec(readme)?.[1];
      assert.ok(block, "README example not found");
      const script = block.replaceAll("nats://127.0.0.1:5222", mesh.sites.b!.url);
      const r = spawnSync("bash", ["-euc", `nats() { "$NATS_CLI" "$@"; }\n${script}`], {
        encoding: "utf8",
        env: { ...process.env, NATS_CLI },
      });
      assert.equal(r.status, 0, r.stderr);
      for (const s of ["a", "b"])
        await until(async () => (await (await mesh.kv(s)).get("app.theme"))?.string() === "light", {
          message: `site ${s} does not hold the README's op`,
        });
    });

    it("an op further ahead than --max-clock-skew waits (parked, raised), then is applied at every site", async () => {
      const ts = (Date.now() + SKEW_MS + 4000) * 1000;
      await publishHandMade(nc.a!, {
        op: "put",
        bucket: "config",
        key: "future.key",
        value: "from-the-future",
        ts,
        node_id: "operator",
      });
      const st = await parked(nc.a!);
      const cond = st.conditions?.find((c) => c.code === "CLOCK_SKEW_REFUSED");
      assert.equal(cond?.severity, "error");
      assert.equal(await (await mesh.kv("a")).get("future.key"), null, "applied before it was acceptable");
      const check = await syncd(["status", "--check", "--server", mesh.sites.a!.url]);
      assert.equal(check.code, 1, check.out);
      assert.match(check.out, /CLOCK_SKEW_REFUSED/);
      // then, once acceptable: applied at both sites with its own version, nothing dead-lettered
      for (const s of ["a", "b"])
        await until(
          async () => (await (await mesh.kv(s)).get("future.key"))?.string() === "from-the-future",
          {
            timeout: 30_000,
            message: `site ${s} never applied the parked op`,
          },
        );
      assert.equal(await dlqCount(nc.a!, "a"), 0);
      assert.equal(await dlqCount(nc.b!, "b"), 0);
      const clock = await call<ClockNowResponse>(nc.b!, "b", "clock", "now");
      // HLC: every next tick is at least the persisted mark and the physical time; an op applied
      // after its ts had passed in wall time (a loaded host) needs no observe, so the mark may stay below
      assert.ok(
        Math.max(clock.ts, clock.physical_ms * HLC_TICKS_PER_MS) >= ts,
        "the clock did not move past the op once it was accepted",
      );
    });
  });

  describe("Lamport", () => {
    const { mesh, nc } = withLinkedMesh({
      sites: ["a", "b"],
      clock: "lamport",
      serviceArgs: ["--max-clock-jump", "1000", "--reconcile-interval", "0"],
    });

    it("an op stamped 2^53-1 cannot push the clock to its end; the site keeps replicating", async () => {
      await publishHandMade(nc.a!, {
        op: "put",
        bucket: "config",
        key: "end.of.time",
        value: "x",
        ts: Number.MAX_SAFE_INTEGER,
        node_id: "operator",
      });
      const st = await parked(nc.a!);
      assert.ok(st.conditions?.some((c) => c.code === "CLOCK_JUMP_REFUSED" && c.severity === "error"));
      const clock = await call<ClockNowResponse>(nc.a!, "a", "clock", "now");
      assert.ok(clock.ts < 1_000_000, `clock at ${clock.ts}`);
      assert.ok(clock.conditions?.some((c) => c.code === "CLOCK_JUMP_REFUSED"));
      // writes at a still replicate, stamped far from the end
      await (await mesh.kv("a")).put("after.jump", "still-replicated");
      await until(
        async () => (await (await mesh.kv("b")).get("after.jump"))?.string() === "still-replicated",
        {
          message: "a write at a did not reach b",
        },
      );
      assert.equal(await (await mesh.kv("b")).get("end.of.time"), null);
      // an op within the jump is applied
      const now = (await call<ClockNowResponse>(nc.a!, "a", "clock", "now")).ts;
      await publishHandMade(nc.a!, {
        op: "put",
        bucket: "config",
        key: "small.jump",
        value: "ok",
        ts: now + 900,
        node_id: "operator",
      });
      for (const s of ["a", "b"])
        await until(async () => (await (await mesh.kv(s)).get("small.jump"))?.string() === "ok", {
          message: `site ${s} did not apply an op within the jump`,
        });
      assert.equal(await dlqCount(nc.a!, "a"), 0);
      const check = await syncd(["status", "--check", "--server", mesh.sites.a!.url]);
      assert.equal(check.code, 1, check.out);
    });

    it("a clock behind an op catches up one jump a minute: refused for a while, not for ever", async () => {
      const kv = await new Kvm(nc.a!).create("catchup_clock", { history: 1 });
      let now = 1_000_000;
      const deps: ClockDeps = {
        kv,
        mode: ClockMode.lamport,
        maxSkewMs: 60_000,
        maxJump: 100,
        now: () => now,
        cache: null,
        counts: { ticks: 0, observed: 0, conflicts: 0, skew_refused: 0, jump_refused: 0 },
        serial: new Serial(),
      };
      const target = 450;
      const refused = async () => {
        await assert.rejects(
          observeTs(deps, target),
          (e: unknown) => isSyncdError(e) && e.code === "SYNCD_ERR_CLOCK_SKEW",
        );
        return deps.cache?.hw ?? 0;
      };
      assert.equal(await refused(), 100, "the first refusal moves the clock one jump towards the op");
      assert.equal(await refused(), 100, "moved twice within a minute");
      now += LAMPORT_CATCH_UP_MS;
      assert.equal(await refused(), 200);
      now += LAMPORT_CATCH_UP_MS;
      assert.equal(await refused(), 300);
      now += LAMPORT_CATCH_UP_MS;
      // never past ts - jump: the op itself is what moves it the rest of the way
      assert.equal(await refused(), 350);
      assert.equal((await observeTs(deps, target)).ts, target, "accepted once within the jump");
      assert.equal(deps.cache?.hw, target);
    });
  });

  describe("skewed hosts (up to --max-clock-skew)", () => {
    it(
      "a ticker on a host so loaded that every block is old when it arrives still hands out timestamps",
      { timeout: 20_000 },
      async () => {
        const nc = await hlc.mesh.connect("a");
        let mono = 0;
        const ticker = new Ticker(nc, "a", {
          hlc: true,
          monotonic: () => {
            mono += 100;
            return mono;
          },
        });
        const ts: number[] = [];
        for (let i = 0; i < 20; i++) ts.push(await ticker.tick());
        for (let i = 1; i < ts.length; i++) assert.ok(ts[i]! > ts[i - 1]!);
      },
    );

    for (const offset of [50_000, -50_000]) {
      it(`a watcher's ticker and a merger's observer on a host ${offset > 0 ? "ahead" : "behind"} by 50 s`, async () => {
        const nc = await hlc.mesh.connect("a");
        const hostNow = () => Date.now() + offset;
        const ticker = new Ticker(nc, "a", { hlc: true, maxBlockAgeMs: 1000 });
        const first = await ticker.tick();
        const ts: number[] = [first];
        for (let i = 0; i < 200; i++) ts.push(await ticker.tick());
        for (let i = 1; i < ts.length; i++) assert.ok(ts[i]! > ts[i - 1]!);
        assert.ok(
          Math.abs(Math.floor(first / 1000) - Date.now()) < 5000,
          "ticks follow the clock service's time",
        );
        const observer = new Observer(nc, "a", { hlc: true, now: hostNow });
        await observer.observe(ts.at(-1)!); // learns the clock service's time
        const ahead = (Date.now() + 1000) * 1000; // ahead of the clock service, behind or ahead of this host
        await observer.observe(ahead);
        const next = await new Ticker(nc, "a", { hlc: true }).tick();
        assert.ok(next > ahead, "the clock did not move past an observed ts");
      });
    }
  });
});
