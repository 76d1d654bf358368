/** I7 (parsing): every kind of bad op is refused with a clear, coded reason; good ops round-trip. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SyncdError } from "../../services/lib/errors.ts";
import { encodeValue, makeOp, opValue, parseOp } from "../../services/lib/op.ts";

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
