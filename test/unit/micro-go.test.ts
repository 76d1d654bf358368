/**
 * The Go round trip of test/micro-go.ts (what `nats micro` does to a $SRV reply before checking it
 * against the official schemas) rejects what natscli rejects and normalises what natscli normalises.
 * This is what lets test/micro-conformance.test.ts fail.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  GoJsonError,
  type MicroKind,
  type NatsCliCheck,
  checkLikeNatsCli,
  formatGoTime,
  goRoundTrip,
  parseGoRFC3339,
} from "../micro-go.ts";

const ping = {
  type: "io.nats.micro.v1.ping_response",
  name: "syncd-clock",
  id: "ABC123",
  version: "0.1.0",
  metadata: { site: "a" },
};
const info = {
  ...ping,
  type: "io.nats.micro.v1.info_response",
  description: "the site clock",
  endpoints: [
    {
      name: "tick",
      subject: "syncd.a.clock.tick",
      queue_group: "syncd",
      metadata: { "schema.request": "x" },
    },
  ],
};
const endpoint = {
  name: "tick",
  subject: "syncd.a.clock.tick",
  queue_group: "syncd",
  num_requests: 3,
  num_errors: 1,
  last_error: "boom",
  processing_time: 1500000,
  average_processing_time: 500000,
};
const stats = {
  ...ping,
  type: "io.nats.micro.v1.stats_response",
  started: "2025-01-02T03:04:05.678Z",
  endpoints: [endpoint],
};

function check(kind: MicroKind, v: unknown): NatsCliCheck {
  return checkLikeNatsCli(kind, typeof v === "string" ? v : JSON.stringify(v));
}
function rejected(kind: MicroKind, v: unknown, stage: string, match: RegExp): void {
  const r = check(kind, v);
  assert.equal(r.ok, false, `expected a rejection of ${typeof v === "string" ? v : JSON.stringify(v)}`);
  if (r.ok) return;
  assert.equal(r.stage, stage, r.errors.join("; "));
  assert.match(r.errors.join("; "), match);
}
function withEndpoint(patch: Record<string, unknown>, drop: string[] = []): Record<string, unknown> {
  const e: Record<string, unknown> = { ...endpoint, ...patch };
  for (const k of drop) delete e[k];
  return { ...stats, endpoints: [e] };
}

describe("Go round trip of micro replies (natscli's check)", () => {
  it("accepts well-formed PING, INFO and STATS replies", () => {
    for (const [kind, v] of [
      ["ping", ping],
      ["info", info],
      ["stats", stats],
    ] as const) {
      const r = check(kind, v);
      assert.ok(r.ok, JSON.stringify(r));
    }
  });

  it("rejects a fractional processing_time (Go decodes it into time.Duration, an int64)", () => {
    rejected(
      "stats",
      withEndpoint({ processing_time: 1500000.5 }),
      "decode",
      /number 1500000.5 .*processing_time of type time.Duration/,
    );
    // integral but not written as an integer: strconv.ParseInt refuses it too
    rejected(
      "stats",
      JSON.stringify(withEndpoint({})).replace('"processing_time":1500000', '"processing_time":1.0'),
      "decode",
      /number 1\.0/,
    );
    rejected(
      "stats",
      JSON.stringify(withEndpoint({})).replace('"processing_time":1500000', '"processing_time":15e5'),
      "decode",
      /number 15e5/,
    );
    rejected("stats", withEndpoint({ average_processing_time: -0.25 }), "decode", /average_processing_time/);
  });

  it("rejects a string num_requests (and other wrong JSON types)", () => {
    rejected(
      "stats",
      withEndpoint({ num_requests: "3" }),
      "decode",
      /cannot unmarshal string .*num_requests of type int/,
    );
    rejected("stats", withEndpoint({ num_errors: true }), "decode", /cannot unmarshal bool .*num_errors/);
    rejected(
      "stats",
      withEndpoint({ last_error: 5 }),
      "decode",
      /cannot unmarshal number .*last_error of type string/,
    );
    rejected("stats", { ...stats, started: 1735787045 }, "decode", /not a JSON string/);
    rejected("info", { ...info, endpoints: {} }, "decode", /cannot unmarshal object .*endpoints/);
    rejected(
      "ping",
      { ...ping, metadata: { site: 1 } },
      "decode",
      /cannot unmarshal number .*metadata of type string/,
    );
    rejected("ping", { ...ping, metadata: ["a"] }, "decode", /cannot unmarshal array .*metadata/);
    rejected("ping", { ...ping, schema: 7 }, "decode", /schema of type string/);
  });

  it('rejects a reply missing name (Go zero value "" fails the schema)', () => {
    const { name: _n, ...noName } = ping;
    rejected("ping", noName, "schema", /\/name/);
    const { name: _m, ...noNameStats } = stats;
    rejected("stats", noNameStats, "schema", /\/name/);
    rejected("stats", withEndpoint({}, ["name"]), "schema", /\/endpoints\/0\/name/);
    const { id: _i, ...noId } = info;
    rejected("info", noId, "schema", /\/id/);
    rejected("info", { ...info, version: "1.0" }, "schema", /\/version/);
  });

  it("rejects integers outside int64, and near ±2^63 where natscli's float64 round trip breaks", () => {
    rejected(
      "stats",
      JSON.stringify(withEndpoint({})).replace('"num_requests":3', '"num_requests":9223372036854775808'),
      "decode",
      /number 9223372036854775808/,
    );
    rejected(
      "stats",
      JSON.stringify(withEndpoint({})).replace('"num_requests":3', '"num_requests":9223372036854775807'),
      "schema",
      /num_requests.*float64/,
    );
    const r = check(
      "stats",
      JSON.stringify(withEndpoint({})).replace('"num_requests":3', '"num_requests":9007199254740993'),
    );
    assert.ok(r.ok, JSON.stringify(r));
    assert.match(r.json, /"num_requests":9007199254740993/, "exact int64 digits survive the Go encode");
  });

  it("rejects the wrong type, bad JSON and unusable times", () => {
    rejected("stats", ping, "type", /invalid response type io.nats.micro.v1.ping_response/);
    rejected("ping", { ...ping, type: undefined }, "type", /io.nats.unknown_message/);
    rejected("ping", "null", "type", /unknown_message/);
    rejected("ping", `${JSON.stringify(ping)} x`, "decode", /invalid character/);
    rejected("ping", `\uFEFF${JSON.stringify(ping)}`, "decode", /invalid character/);
    rejected("ping", JSON.stringify(ping).replace("{", "{'a':1,"), "decode", /invalid character/);
    rejected("stats", { ...stats, started: "2025-02-30T00:00:00Z" }, "decode", /day out of range/);
    rejected("stats", { ...stats, started: "2025-01-02 03:04:05Z" }, "decode", /cannot parse/);
    rejected("stats", { ...stats, started: "2025-01-02T03:04:05" }, "decode", /cannot parse/);
    rejected("stats", JSON.stringify(stats).replace("678Z", "678\\u005a"), "decode", /cannot parse/);
    rejected("stats", { ...stats, started: "2025-01-02T03:04:05+24:00" }, "encode", /timezone hour/);
    rejected("stats", { ...stats, endpoints: null }, "schema", /\/endpoints/);
    rejected("stats", { ...stats, endpoints: [null] }, "schema", /\/endpoints\/0/);
    rejected("info", { ...info, endpoints: undefined }, "schema", /\/endpoints/);
  });

  it("normalises like Go: unknown fields dropped, zero values filled, case-insensitive keys, last key wins", () => {
    const r = check("stats", {
      ...stats,
      extra: { anything: [1, 2] },
      metadata: null,
      endpoints: [{ NAME: "tick", Subject: "syncd.a.clock.tick", num_requests: 1, num_requests_x: "junk" }],
    });
    assert.ok(r.ok, JSON.stringify(r));
    assert.deepEqual(r.normalized, {
      name: "syncd-clock",
      id: "ABC123",
      version: "0.1.0",
      metadata: null,
      type: "io.nats.micro.v1.stats_response",
      started: "2025-01-02T03:04:05.678Z",
      endpoints: [
        {
          name: "tick",
          subject: "syncd.a.clock.tick",
          queue_group: "",
          num_requests: 1,
          num_errors: 0,
          last_error: "",
          processing_time: 0,
          average_processing_time: 0,
        },
      ],
    });
    assert.equal(
      goRoundTrip("ping", '{"name":"a","NAME":"b","nam\\u0065":"c","\u212Aey":1,"type":"x","id":null}'),
      '{"name":"c","id":"","version":"","metadata":null,"type":"x"}',
    );
    // a repeated map is merged into, a repeated struct decoded into what is there
    assert.equal(
      goRoundTrip("ping", '{"metadata":{"b":"2","a":"1"},"metadata":{"c":null}}'),
      '{"name":"","id":"","version":"","metadata":{"a":"1","b":"2","c":""},"type":""}',
    );
    // data is a json.RawMessage with omitempty: kept (compacted) when present, null included
    assert.match(
      goRoundTrip("stats", JSON.stringify(withEndpoint({ data: { x: [1, { y: null }] } }))),
      /"data":\{"x":\[1,\{"y":null\}\]\}/,
    );
    assert.match(goRoundTrip("stats", JSON.stringify(withEndpoint({ data: null }))), /"data":null/);
    assert.doesNotMatch(goRoundTrip("stats", JSON.stringify(withEndpoint({}))), /"data"/);
    // a missing started becomes Go's zero time, which the schema accepts
    const { started: _s, ...noStarted } = stats;
    const z = check("stats", noStarted);
    assert.ok(z.ok && (z.normalized as { started: string }).started === "0001-01-01T00:00:00Z");
  });

  it("parses times like time.Parse(RFC3339) and formats them like MarshalJSON", () => {
    const t = (s: string) => {
      const p = parseGoRFC3339(s);
      if (typeof p === "string") throw new GoJsonError(p);
      return formatGoTime(p);
    };
    assert.equal(t("2025-01-02T03:04:05Z"), "2025-01-02T03:04:05Z");
    assert.equal(t("2025-01-02T03:04:05.120000Z"), "2025-01-02T03:04:05.12Z");
    assert.equal(t("2025-01-02T03:04:05,5+02:00"), "2025-01-02T03:04:05.5+02:00");
    assert.equal(t("2025-01-02T3:04:05-00:00"), "2025-01-02T03:04:05Z");
    assert.equal(t("2025-01-02T03:04:05.1234567891234Z"), "2025-01-02T03:04:05.123456789Z");
    assert.equal(t("2024-02-29T00:00:00Z"), "2024-02-29T00:00:00Z");
    for (const bad of [
      "2023-02-29T00:00:00Z",
      "2025-13-01T00:00:00Z",
      "2025-01-01T24:00:00Z",
      "2025-01-01T00:60:00Z",
      "2025-01-01T00:00:00+0100",
      "2025-01-01T00:00:00z",
      "25-01-01T00:00:00Z",
    ])
      assert.equal(typeof parseGoRFC3339(bad), "string", bad);
  });
});
