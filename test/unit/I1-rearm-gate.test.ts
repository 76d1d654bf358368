/**
 * I1 after outages, the rule that re-arms a stalled stream source (services/lib/rearm.ts): never
 * while the source is heard from, at once when it has been silent past the threshold, after a
 * shorter wait when it shows no consumer at all, and never in a loop: re-arms of a source that stays
 * stalled are spaced by a gap that doubles up to a maximum, reset once it is heard from again.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { StreamSourceInfo } from "@nats-io/jetstream";
import fc from "fast-check";
import {
  REARM_MAX_HUB_SOURCES,
  RearmGate,
  rearmsHubSource,
  sourcesBackOff,
  versionOfStreamConfig,
} from "../../services/mod.ts";
import { fcParams } from "../fc.ts";

const o = { stallMs: 5_000, neverMs: 3_000, maxGapMs: 60_000 };
const src = (activeMs: number): StreamSourceInfo => ({
  name: "SYNCD_HUB",
  lag: 0,
  active: activeMs < 0 ? -1 : activeMs * 1_000_000,
});

describe("I1 re-arm of a stalled source", () => {
  it("I1 a source silent past the threshold is due at once; heard from or absent, never", () => {
    const g = new RearmGate(o);
    assert.equal(g.due(src(500), 0), false);
    assert.equal(g.due(src(4_999), 1), false);
    assert.equal(g.due(undefined, 2), false);
    assert.equal(g.due(src(5_000), 3), true);
  });

  it("I1 a source without a consumer is due once the gate has seen it so for neverMs", () => {
    const g = new RearmGate(o);
    assert.equal(g.due(src(-1), 1_000), false);
    assert.equal(g.wait(src(-1), 2_000), 2_000);
    assert.equal(g.due(src(-1), 4_000), true);
  });

  it("I1 never in a loop: re-arms of a source that stays stalled are spaced by a doubling gap, reset once heard", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            dt: fc.integer({ min: 1, max: 20_000 }),
            // -1: no consumer; below 3 s: heard from; else silent that long
            active: fc.oneof(
              fc.constant(-1),
              fc.integer({ min: 0, max: 2_999 }),
              fc.integer({ min: 3_000, max: 600_000 }),
            ),
          }),
          { maxLength: 200 },
        ),
        (obs) => {
          const g = new RearmGate(o);
          let now = 0;
          let last: number | undefined;
          let streak = 0;
          for (const x of obs) {
            now += x.dt;
            const heard = x.active >= 0 && x.active < 3_000;
            if (heard) streak = 0;
            if (!g.due(src(x.active), now)) continue;
            assert.ok(!heard, `due while heard from (active ${x.active} ms)`);
            if (x.active >= 0) assert.ok(x.active >= o.stallMs);
            if (streak > 0 && last !== undefined)
              assert.ok(
                now - last >= Math.min(o.stallMs * 2 ** (streak - 1), o.maxGapMs),
                `re-arm ${streak + 1} of a streak ${now - last} ms after the previous one`,
              );
            g.rearmed(now);
            last = now;
            streak++;
          }
        },
      ),
      fcParams(),
    );
  });
});

/** SYNCD_HUB's config as a site read it through the hub's JetStream API (recorded 2026-11-30). */
const HUB_CONFIG = {
  "2.9.10": {
    name: "SYNCD_HUB",
    retention: "limits",
    max_consumers: -1,
    max_msgs: -1,
    max_bytes: 1073741824,
    max_age: 0,
    max_msgs_per_subject: 1,
    max_msg_size: -1,
    discard: "old",
    storage: "file",
    num_replicas: 1,
    duplicate_window: 120000000000,
    sources: [{ name: "SYNCD_OPS_a", external: { api: "$JS.a.API", deliver: "" } }],
    allow_direct: false,
    mirror_direct: false,
    sealed: false,
    deny_delete: false,
    deny_purge: false,
    allow_rollup_hdrs: false,
  },
  "2.15.2": {
    name: "SYNCD_HUB",
    retention: "limits",
    max_consumers: -1,
    max_msgs: -1,
    max_bytes: 1073741824,
    max_age: 0,
    max_msgs_per_subject: 1,
    max_msg_size: -1,
    discard: "old",
    storage: "file",
    num_replicas: 1,
    sources: [{ name: "SYNCD_OPS_a", external: { api: "$JS.a.API", deliver: "" } }],
    compression: "none",
    allow_direct: false,
    mirror_direct: false,
    sealed: false,
    deny_delete: false,
    deny_purge: false,
    allow_rollup_hdrs: false,
    consumer_limits: {},
    allow_msg_ttl: false,
    metadata: { "_nats.level": "5", "_nats.req.level": "0", "_nats.ver": "2.15.2" },
  },
};

describe("I1 the hub's server version, seen from a site", () => {
  it("I1 a site learns the hub's version from the hub's stream config, whatever its own server is", () => {
    // recorded with a 2.9.10 site under a 2.15.2 hub and the other way round: the site's own
    // version (nc.info.version) said the opposite both times
    const old = versionOfStreamConfig(HUB_CONFIG["2.9.10"]);
    const current = versionOfStreamConfig(HUB_CONFIG["2.15.2"]);
    assert.equal(old, "2.9.0");
    assert.equal(current, "2.15.2");
    assert.equal(sourcesBackOff(old), false, "a 2.9 hub retries its sources by itself: no re-arm");
    assert.equal(sourcesBackOff(current), true);
    // 2.10 writes the new fields without naming itself in the metadata
    const { metadata: _, ...v210 } = HUB_CONFIG["2.15.2"];
    assert.equal(versionOfStreamConfig(v210), "2.10.0");
    assert.equal(sourcesBackOff(versionOfStreamConfig(v210)), true);
    assert.equal(versionOfStreamConfig({ ...v210, metadata: { "_nats.ver": "bogus" } }), "2.10.0");
  });
});

describe("I1 a hub restart at hundreds of sites: no re-arm herd", () => {
  it("I1 after an outage on the hub's side a watcher re-arms its entry only on a 2.10+ hub whose aggregate has at most REARM_MAX_HUB_SOURCES sources; after its own site's outage at any N", () => {
    assert.equal(rearmsHubSource("2.15.2", 2, false), true);
    assert.equal(rearmsHubSource("2.15.2", REARM_MAX_HUB_SOURCES, false), true);
    assert.equal(
      rearmsHubSource("2.15.2", REARM_MAX_HUB_SOURCES + 1, false),
      false,
      "beyond it: the server's own retry",
    );
    assert.equal(rearmsHubSource("2.15.2", 10 * REARM_MAX_HUB_SOURCES, true), true, "one site's own outage");
    assert.equal(rearmsHubSource("2.9.0", 2, true), false);
  });
});
