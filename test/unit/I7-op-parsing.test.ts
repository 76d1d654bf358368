/** I7 (parsing): every kind of bad op is refused with a clear, coded reason; good ops round-trip. */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { headers as natsHeaders } from "@nats-io/nats-core";
import fc from "fast-check";
import {
  Headers,
  INLINE_OP_MAX,
  MsgIds,
  SyncdError,
  admit,
  decodeOpMessage,
  encodeOpMessage,
  encodeValue,
  headerBytesBound,
  kvFilter,
  kvKeyOf,
  kvSubject,
  makeOp,
  mergerHeaderBytes,
  opMessageSize,
  opValue,
  opValueSize,
  parseOp,
} from "../../services/mod.ts";

const enc = new TextEncoder();
const good = { op: "put", bucket: "config", key: "app/theme", value: "dark", ts: 12, node_id: "site-a" };
const raw = (o: unknown) => enc.encode(typeof o === "string" ? o : JSON.stringify(o));

function refused(o: unknown, code: string, field?: string) {
  assert.throws(
    () => parseOp(raw(o)),
    (err: unknown) => {
      assert.ok(err instanceof SyncdError, String(err));
      assert.equal(err.code, code);
      if (field) assert.match(err.message, new RegExp(field));
      return true;
    },
  );
}

describe("I7 op parsing", () => {
  it("accepts the wire op of the original agents, and deletes without value", () => {
    assert.deepEqual(parseOp(raw(good)), good);
    const del = { op: "delete", bucket: "config", key: "app/theme", ts: 13, node_id: "site-b" };
    assert.deepEqual(parseOp(raw(del)), del);
  });

  it("refuses what is not JSON, or not UTF-8", () => {
    refused("{not json", "SYNCD_ERR_NOT_JSON");
    assert.throws(() => parseOp(new Uint8Array([0xff, 0xfe, 0x7b])), /not JSON/);
  });

  it("refuses the wrong shape, naming the field", () => {
    refused([1, 2], "SYNCD_ERR_SCHEMA");
    refused({ ...good, op: "upsert" }, "SYNCD_ERR_SCHEMA", "op");
    refused({ ...good, node_id: undefined }, "SYNCD_ERR_SCHEMA", "node_id");
    refused({ ...good, value: undefined }, "SYNCD_ERR_SCHEMA", "value");
    refused({ ...good, value: 42 }, "SYNCD_ERR_SCHEMA", "value");
    refused({ ...good, ts: -1 }, "SYNCD_ERR_SCHEMA", "ts");
    refused({ ...good, ts: 1.5 }, "SYNCD_ERR_SCHEMA", "ts");
    refused({ ...good, ts: "12" }, "SYNCD_ERR_SCHEMA", "ts");
    refused({ ...good, ts: 2 ** 53 }, "SYNCD_ERR_SCHEMA", "ts");
    refused({ ...good, bucket: "con fig" }, "SYNCD_ERR_SCHEMA", "bucket");
  });

  it("refuses keys that are not valid NATS KV keys", () => {
    for (const key of ["", ".lead", "trail.", "a..b", "a b", "a*", "a>", "ñ"])
      refused({ ...good, key }, "SYNCD_ERR_SCHEMA", "key");
    for (const key of ["a", "a.b", "a/b=c-d_e", "A.9"]) assert.equal(parseOp(raw({ ...good, key })).key, key);
  });

  it("refuses base64 that does not decode", () => {
    refused({ ...good, encoding: "base64", value: "@@@" }, "SYNCD_ERR_BAD_BASE64");
    refused({ ...good, encoding: "base64", value: "abc" }, "SYNCD_ERR_BAD_BASE64");
    assert.deepEqual(
      opValue(parseOp(raw({ ...good, encoding: "base64", value: "AAEC/w==" }))),
      new Uint8Array([0, 1, 2, 255]),
    );
  });

  it("binary values travel as base64, text as text", () => {
    assert.deepEqual(encodeValue(enc.encode("dark")), { value: "dark" });
    const bin = new Uint8Array([0xff, 0x00, 0x80]);
    const e = encodeValue(bin);
    assert.equal(e.encoding, "base64");
    const op = makeOp({ bucket: "config", key: "k", ts: 1, nodeId: "n", deleted: false, value: bin });
    assert.deepEqual(opValue(parseOp(raw(op))), bin);
  });
});

describe("op wire forms (I3: any value the bucket accepts fits in one op message)", () => {
  const put = (value: Uint8Array) =>
    makeOp({ bucket: "config", key: "k", ts: 7, nodeId: "site-a", deleted: false, value });

  it("small ops stay the plain JSON of DESIGN §2, with no headers", () => {
    const op = put(enc.encode("dark"));
    const m = encodeOpMessage(op);
    assert.equal(m.headers, undefined);
    assert.deepEqual(JSON.parse(new TextDecoder().decode(m.data)), op);
    assert.deepEqual(decodeOpMessage(m.data, m.headers), op);
  });

  it("a large binary value is split: raw bytes as payload, the op without value in Syncd-Op", () => {
    const bin = new Uint8Array(randomBytes(900 * 1024));
    const m = encodeOpMessage(put(bin));
    assert.ok(m.headers);
    assert.deepEqual(m.data, bin);
    const h = JSON.parse(m.headers.get(Headers.op));
    assert.deepEqual(h, { op: "put", bucket: "config", key: "k", ts: 7, node_id: "site-a" });
    assert.deepEqual(opValue(decodeOpMessage(m.data, m.headers)), bin);
    assert.ok(opMessageSize(m) < bin.length + 200, "no base64 or JSON inflation");
  });

  it("round-trips any value and any delete, whichever form it takes", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 3 * INLINE_OP_MAX }),
          fc.string({ maxLength: 2 * INLINE_OP_MAX }),
        ),
        fc.boolean(),
        (v, del) => {
          const value = typeof v === "string" ? enc.encode(v) : v;
          const op = makeOp({ bucket: "b", key: "x.y", ts: 3, nodeId: "n", deleted: del, value });
          const m = encodeOpMessage(op);
          const back = decodeOpMessage(m.data, m.headers);
          assert.deepEqual(opValue(back), del ? new Uint8Array() : value);
          assert.equal(opValueSize(back), opValue(back).length, "the size without decoding");
          assert.equal(back.op, op.op);
          assert.ok(opMessageSize(m) <= Math.max(INLINE_OP_MAX, value.length + 200));
        },
      ),
      { numRuns: 60 },
    );
  });

  it("refuses split ops that are bad: value in the header, a delete with a payload, bad JSON or schema", () => {
    const h = (o: unknown) => {
      const x = natsHeaders();
      x.set(Headers.op, typeof o === "string" ? o : JSON.stringify(o));
      return x;
    };
    const base = { op: "put", bucket: "config", key: "k", ts: 1, node_id: "n" };
    const code = (fn: () => unknown, c: string) =>
      assert.throws(fn, (e: unknown) => e instanceof SyncdError && e.code === c);
    code(() => decodeOpMessage(enc.encode("v"), h({ ...base, value: "x" })), "SYNCD_ERR_SCHEMA");
    code(() => decodeOpMessage(enc.encode("v"), h({ ...base, op: "delete" })), "SYNCD_ERR_SCHEMA");
    code(() => decodeOpMessage(enc.encode("v"), h("{nope")), "SYNCD_ERR_NOT_JSON");
    code(() => decodeOpMessage(enc.encode("v"), h({ ...base, ts: -1 })), "SYNCD_ERR_SCHEMA");
    code(() => decodeOpMessage(enc.encode("v"), h([1])), "SYNCD_ERR_SCHEMA");
    assert.equal(decodeOpMessage(new Uint8Array(), h({ ...base, op: "delete" })).op, "delete");
    assert.equal(decodeOpMessage(enc.encode("v"), h(base)).value, "v");
  });

  it("message ids of forwarded hand-made ops never meet a local write's, a bucket named `in` included", () => {
    fc.assert(
      fc.property(fc.stringMatching(/^[a-zA-Z0-9_-]{1,8}$/), fc.nat(), fc.nat(), (bucket, rev, seq) => {
        assert.notEqual(MsgIds.localWrite("a", bucket, rev), MsgIds.forwarded("a", seq));
      }),
    );
    assert.notEqual(MsgIds.localWrite("a", "in", 5), MsgIds.forwarded("a", 5));
  });

  it("a KV subject gives back its key; a subject of another bucket is refused", () => {
    fc.assert(
      fc.property(
        fc.stringMatching(/^[a-zA-Z0-9_-]{1,8}$/),
        fc.stringMatching(/^[-/_=.a-zA-Z0-9]{1,20}$/),
        (bucket, key) => {
          assert.equal(kvKeyOf(bucket, kvSubject(bucket, key)), key);
          assert.throws(() => kvKeyOf(`${bucket}x`, kvSubject(bucket, key)));
        },
      ),
    );
    assert.equal(kvFilter("config"), "$KV.config.>");
    assert.throws(() => kvKeyOf("config", "$KV.config_meta.k"));
  });
});

describe("I7 a value too large with its version headers is refused before anything is written", () => {
  it("I7 admit refuses exactly the puts whose value and version headers exceed the limit (headers built only near it)", () => {
    fc.assert(
      fc.property(
        fc.string({ unit: "binary", minLength: 1, maxLength: 80 }).filter((s) => !/[\r\n]/.test(s)),
        fc.integer({ min: 0, max: 400 }),
        fc.integer({ min: -300, max: 300 }),
        fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
        (nodeId, size, slack, ts) => {
          const headers = mergerHeaderBytes({ ts: Number.MAX_SAFE_INTEGER, node_id: nodeId, deleted: false });
          assert.ok(headers <= headerBytesBound(nodeId), `bound ${headerBytesBound(nodeId)} < ${headers}`);
          const limit = Math.max(0, size + headers + slack);
          const deps = {
            buckets: new Map([["config", { maxValueSize: limit } as never]]),
            observe: async () => {},
            checkSkew: () => {},
          };
          const op = makeOp({
            bucket: "config",
            key: "k",
            ts,
            nodeId,
            deleted: false,
            value: new Uint8Array(size),
          });
          const fits = opValueSize(op) + mergerHeaderBytes({ ...op, deleted: false }) <= limit;
          if (fits) admit(deps, op);
          else
            assert.throws(
              () => admit(deps, op),
              (e: SyncdError) => e.code === "SYNCD_ERR_TOO_LARGE",
            );
        },
      ),
    );
  });
});
