/**
 * The wire op (DESIGN §2): parsing with clear reasons, and building ops from bucket entries.
 */
import { SyncdError } from "./errors.ts";
import type { Versioned } from "./lww.ts";
import { check } from "./schema-registry.ts";
import type { Op } from "./schemas.gen.ts";

export type { Op };

/** The two op kinds, as on the wire. */
export const OpKind = { put: "put", delete: "delete" } as const;

const utf8 = new TextDecoder("utf-8", { fatal: true });
const enc = new TextEncoder();
const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Parse and validate an op payload: throws SyncdError(NOT_JSON | SCHEMA | BAD_BASE64). */
export function parseOp(data: Uint8Array): Op {
  let raw: unknown;
  try {
    raw = JSON.parse(utf8.decode(data));
  } catch {
    throw new SyncdError("SYNCD_ERR_NOT_JSON");
  }
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
