/**
 * The wire op (DESIGN §2): parsing with clear reasons, and building ops from bucket entries.
 */
import { type MsgHdrs, MsgHdrsImpl, headers as natsHeaders } from "@nats-io/nats-core";
import { SyncdError } from "./errors.ts";
import type { Versioned } from "./lww.ts";
import { check } from "./schema-registry.ts";
import type { Op } from "./schemas.gen.ts";
import { Headers } from "./subjects.ts";

export type { Op };

/** The two op kinds, as on the wire. */
export const OpKind = { put: "put", delete: "delete" } as const;

const utf8 = new TextDecoder("utf-8", { fatal: true });
const enc = new TextEncoder();
const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function parseJson(text: () => string): unknown {
  try {
    return JSON.parse(text());
  } catch {
    throw new SyncdError("SYNCD_ERR_NOT_JSON");
  }
}

/** Parse and validate an op payload: throws SyncdError(NOT_JSON | SCHEMA | BAD_BASE64). */
export function parseOp(data: Uint8Array): Op {
  return checkOp(parseJson(() => utf8.decode(data)));
}

function checkOp(raw: unknown): Op {
  const op = check<Op>("op.json", raw);
  if (op.op === OpKind.put && op.encoding === "base64" && !B64.test(op.value ?? "")) {
    throw new SyncdError("SYNCD_ERR_BAD_BASE64", `key "${op.key}"`);
  }
  return op;
}

/** The value bytes an op carries (empty for a delete). */
export function opValue(op: Op): Uint8Array {
  if (op.op !== OpKind.put || op.value === undefined) return new Uint8Array();
  return op.encoding === "base64" ? new Uint8Array(Buffer.from(op.value, "base64")) : enc.encode(op.value);
}

/** The byte length of an op's value, without decoding it (what {@link opValue} would return). */
export function opValueSize(op: Op): number {
  if (op.op !== OpKind.put || op.value === undefined) return 0;
  return Buffer.byteLength(op.value, op.encoding === "base64" ? "base64" : "utf8");
}

/** Encode value bytes for JSON: UTF-8 text as is, anything else as base64. */
export function encodeValue(value: Uint8Array): { value: string; encoding?: "base64" } {
  try {
    return { value: utf8.decode(value) };
  } catch {
    return { value: Buffer.from(value).toString("base64"), encoding: "base64" };
  }
}

/** Build the op of a write. */
export function makeOp(args: {
  bucket: string;
  key: string;
  ts: number;
  nodeId: string;
  deleted: boolean;
  value?: Uint8Array;
}): Op {
  const base = { bucket: args.bucket, key: args.key, ts: args.ts, node_id: args.nodeId };
  if (args.deleted) return { op: OpKind.delete, ...base };
  return { op: OpKind.put, ...base, ...encodeValue(args.value ?? new Uint8Array()) };
}

/** The register state an op describes, for the LWW rule. */
export function opVersioned(op: Op): Versioned {
  return { ts: op.ts, node_id: op.node_id, deleted: op.op === OpKind.delete, value: opValue(op) };
}

/**
 * Largest op message kept in the plain JSON form: above it (a large or binary value) the op
 * travels in the split form, so the value is not inflated by JSON escaping or base64.
 */
export const INLINE_OP_MAX = 32 * 1024;

/** An op as a NATS message: payload and (split form only) headers. */
export type OpMessage = { data: Uint8Array; headers?: MsgHdrs };

/**
 * Encode an op for the wire. Small ops are the plain JSON of DESIGN §2 (what the original agents
 * and `nats pub` send). A put whose JSON exceeds {@link INLINE_OP_MAX} is split: header
 * `Syncd-Op` holds the op's JSON without `value`/`encoding`, the payload is the raw value bytes.
 */
export function encodeOpMessage(op: Op): OpMessage {
  const json = enc.encode(JSON.stringify(op));
  if (op.op !== OpKind.put || json.length <= INLINE_OP_MAX) return { data: json };
  const { value: _v, encoding: _e, ...rest } = op;
  const headers = natsHeaders();
  headers.set(Headers.op, JSON.stringify(rest));
  return { data: opValue(op), headers };
}

/**
 * Decode an op message in either form (see {@link encodeOpMessage}) and validate it. A `Syncd-Op`
 * header that carries a value itself, or a delete with a payload, is refused (SCHEMA). Throws
 * SyncdError(NOT_JSON | SCHEMA | BAD_BASE64).
 */
export function decodeOpMessage(data: Uint8Array, headers?: MsgHdrs): Op {
  const header = headers?.get(Headers.op);
  if (!header) return parseOp(data);
  const raw = parseJson(() => header);
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return checkOp(raw);
  if ("value" in raw || "encoding" in raw) {
    throw new SyncdError("SYNCD_ERR_SCHEMA", `${Headers.op} header must not carry the value`);
  }
  if ((raw as { op?: unknown }).op !== OpKind.put) {
    if (data.length > 0) throw new SyncdError("SYNCD_ERR_SCHEMA", "a delete carries no value");
    return checkOp(raw);
  }
  return checkOp({ ...raw, ...encodeValue(data) });
}

/**
 * Size in bytes of an op message as the server counts it against max_payload: the payload plus the
 * header block, including the given extra headers (e.g. `Nats-Msg-Id`).
 */
export function opMessageSize(m: OpMessage, extra: Record<string, string> = {}): number {
  const lines: [string, string][] = Object.entries(extra);
  if (m.headers) for (const [k, vs] of m.headers) for (const v of vs) lines.push([k, v]);
  if (lines.length === 0) return m.data.length;
  const h = new MsgHdrsImpl();
  for (const [k, v] of lines) h.append(k, v);
  return m.data.length + h.encode().length;
}
