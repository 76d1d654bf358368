/**
 * The health model (services/lib/health.ts): raise / clear / list, severities worst first, events
 * that clear themselves, a bound on what one process keeps, and one condition schema that every
 * status response holds a copy of.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import {
  Conditions,
  Health,
  MAX_CONDITIONS,
  STORE_ERROR,
  STORE_WARN,
  Severity,
  conditionsOf,
  needsPerson,
  reportStores,
  streamUsage,
} from "../../services/mod.ts";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const json = (p: string) => JSON.parse(readFileSync(path.join(REPO, p), "utf8"));

describe("health", () => {
  it("raise, raise again, clear: one condition per code and subject, worst first", () => {
    let now = 1_000_000;
    const h = new Health(() => now);
    assert.deepEqual(h.list(), []);
    assert.equal(h.worst(), Severity.ok);
    h.raise(Conditions.divergenceRepaired, Severity.warn, "moved 3 entries");
    now += 10;
    h.raise(Conditions.keyStuck, Severity.error, { message: "retried 11 times", subject: "config/k1" });
    h.raise(Conditions.keyStuck, Severity.error, { message: "retried 12 times", subject: "config/k1" });
    h.raise(Conditions.keyStuck, Severity.warn, { message: "retried 4 times", subject: "config/k2" });
    const l = h.list();
    assert.deepEqual(
      l.map((c) => [c.code, c.severity, c.subject ?? null, c.count]),
      [
        ["KEY_STUCK", "error", "config/k1", 2],
        ["KEY_STUCK", "warn", "config/k2", 1],
        ["DIVERGENCE_REPAIRED", "warn", null, 1],
      ],
    );
    assert.equal(l[0]?.message, "retried 12 times");
    assert.equal(h.worst(), Severity.error);
    assert.ok(needsPerson(h.worst()));
    h.clear(Conditions.keyStuck, "config/k1");
    assert.equal(h.worst(), Severity.warn);
    assert.ok(!needsPerson(h.worst()));
    h.clear(Conditions.keyStuck);
    assert.deepEqual(
      h.list().map((c) => c.code),
      ["DIVERGENCE_REPAIRED"],
    );
  });

  it("services sharing a process (the agent): each lists and clears its own conditions, and those raised by no service", () => {
    const h = new Health();
    const merger = h.as("syncd-merger");
    const watcher = h.as("syncd-watcher");
    h.raise(Conditions.peerLost, Severity.warn, { message: "no service", subject: "b" });
    merger.raise(Conditions.bucketRecreated, Severity.warn, { message: "merger", subject: "config" });
    watcher.raise(Conditions.bucketRecreated, Severity.warn, { message: "watcher", subject: "config" });
    const seen = (service?: string) =>
      h
        .list(service)
        .map((c) => `${c.code}:${c.message}`)
        .sort();
    assert.deepEqual(seen("syncd-merger"), ["BUCKET_RECREATED:merger", "PEER_LOST:no service"]);
    assert.deepEqual(seen("syncd-watcher"), ["BUCKET_RECREATED:watcher", "PEER_LOST:no service"]);
    assert.deepEqual(seen("syncd-clock"), ["PEER_LOST:no service"]);
    assert.equal(seen().length, 3, "the whole process");
    assert.deepEqual(
      merger
        .list()
        .map((c) => c.message)
        .sort(),
      ["merger", "no service"],
    );
    merger.clear(Conditions.bucketRecreated, "config");
    assert.deepEqual(seen("syncd-watcher"), ["BUCKET_RECREATED:watcher", "PEER_LOST:no service"]);
    assert.deepEqual(seen("syncd-merger"), ["PEER_LOST:no service"]);
  });

  it("a condition raised with ttlMs clears itself unless raised again", () => {
    let now = 0;
    const h = new Health(() => now);
    h.raise(Conditions.clockSkew, Severity.error, { message: "refused", ttlMs: 1000 });
    now = 900;
    assert.equal(h.list().length, 1);
    h.raise(Conditions.clockSkew, Severity.error, { message: "refused again", ttlMs: 1000 });
    now = 1500;
    assert.equal(h.list()[0]?.count, 2);
    now = 1901;
    assert.deepEqual(h.list(), []);
  });

  it("STORE_FILLING: a store that refuses writes or a compacted op log is an error at 95 %, a rotating log only a warning; cleared below 80 %", () => {
    const h = new Health(() => 0);
    const info = (name: string, discard: "old" | "new", perSubject: number, fill: number) =>
      streamUsage({
        config: { name, discard, max_msgs_per_subject: perSubject, max_bytes: 1000, max_msgs: -1 },
        state: { bytes: Math.round(1000 * fill), messages: 10 },
      } as never);
    const severityOf = (name: string) =>
      h.list().find((c) => c.code === Conditions.storeFilling && c.subject === name)?.severity;
    const at = (fill: number) =>
      reportStores(h, [
        info("KV_config", "new", -1, fill),
        info("SYNCD_HUB", "old", 1, fill),
        info("ROTATING", "old", -1, fill),
      ]);
    at(STORE_ERROR);
    assert.equal(severityOf("KV_config"), Severity.error);
    assert.equal(severityOf("SYNCD_HUB"), Severity.error);
    assert.equal(severityOf("ROTATING"), Severity.warn);
    assert.match(h.list().find((c) => c.subject === "SYNCD_HUB")?.message ?? "", /anti-entropy/);
    at(STORE_WARN);
    for (const s of ["KV_config", "SYNCD_HUB", "ROTATING"]) assert.equal(severityOf(s), Severity.warn, s);
    at(STORE_WARN - 0.01);
    assert.deepEqual(h.list(), []);
  });

  it("keeps at most MAX_CONDITIONS, dropping warnings before errors", () => {
    const h = new Health(() => 0);
    h.raise(Conditions.peerLost, Severity.error, { message: "gone", subject: "z" });
    for (let i = 0; i < MAX_CONDITIONS * 3; i++)
      h.raise(Conditions.keyStuck, Severity.warn, { message: "stuck", subject: `k${i}` });
    const l = h.list();
    assert.equal(l.length, MAX_CONDITIONS);
    assert.equal(l[0]?.code, Conditions.peerLost);
  });

  it("syncd status: conditions of every instance's STATS data, and a service with no instance", () => {
    const stats = [
      {
        name: "syncd-merger",
        id: "m1",
        version: "0",
        metadata: { site: "a", instance: "i1" },
        endpoints: [
          {
            name: "merge",
            subject: "x",
            num_requests: 0,
            num_errors: 0,
            processing_time: 0,
            average_processing_time: 0,
            data: {
              applied: 1,
              conditions: [
                {
                  code: "CLOCK_SKEW_REFUSED",
                  severity: "error",
                  message: "m",
                  count: 1,
                  since: "t",
                  last: "t",
                },
              ],
            },
          },
        ],
      },
    ];
    const c = conditionsOf(stats, { "syncd-merger": 1, "syncd-clock": 0 });
    assert.deepEqual(c.map((x) => [x.code, x.severity, x.service]).sort(), [
      ["CLOCK_SKEW_REFUSED", "error", "syncd-merger"],
      ["SERVICE_DOWN", "error", "syncd-clock"],
    ]);
  });

  it("syncd status: in an agent, a condition that shared code raised is one row; each service's own stay apart", () => {
    const cond = (code: string, message: string) => ({
      code,
      severity: "warn",
      message,
      subject: "config",
      count: 1,
      since: "t",
      last: "t",
    });
    const shared = cond(Conditions.metaInvalid, "not a version");
    const service = (name: string, own: object[]) => ({
      name,
      id: `${name}-id`,
      version: "0",
      metadata: { site: "a", instance: "agent-1" },
      endpoints: [
        {
          name: "status",
          subject: "x",
          num_requests: 0,
          num_errors: 0,
          processing_time: 0,
          average_processing_time: 0,
          data: { conditions: [shared, ...own] },
        },
      ],
    });
    const stats = [
      service("syncd-watcher", [cond(Conditions.bucketRecreated, "watcher re-seeded")]),
      service("syncd-merger", [cond(Conditions.bucketRecreated, "merger restores")]),
      service("syncd-clock", []),
    ];
    const c = conditionsOf(stats, { "syncd-watcher": 1, "syncd-merger": 1, "syncd-clock": 1 });
    assert.deepEqual(c.map((x) => [x.code, x.service]).sort(), [
      ["BUCKET_RECREATED", "syncd-merger"],
      ["BUCKET_RECREATED", "syncd-watcher"],
      ["META_INVALID", "syncd-watcher"],
    ]);
  });

  it("every status response holds the condition schema of schemas/health/condition.json", () => {
    const cond = json("schemas/health/condition.json");
    for (const f of [
      "schemas/watcher/status.response.json",
      "schemas/merger/status.response.json",
      "schemas/reconciler/status.response.json",
      "schemas/clock/now.response.json",
    ]) {
      const items = json(f).properties.conditions.items;
      assert.deepEqual(
        { type: items.type, required: items.required, properties: items.properties },
        { type: cond.type, required: cond.required, properties: cond.properties },
        `${f}: conditions.items differs from schemas/health/condition.json`,
      );
    }
  });
});
