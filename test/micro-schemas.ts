/**
 * The official micro (ADR-32) response schemas that natscli validates replies against
 * (test/fixtures/micro-schemas, copies of nats-io/jsm.go's), compiled once with ajv: draft-07,
 * formats asserted. The real CLI's own check runs in test/micro-conformance.test.ts.
 */
import { readFileSync } from "node:fs";
import { Ajv, type ValidateFunction } from "ajv";
import addFormatsModule from "ajv-formats";

export type MicroKind = "ping" | "info" | "stats";

/** The result of checking one reply against its official schema. */
export type SchemaCheck = { ok: true; normalized: unknown } | { ok: false; stage: string; errors: string[] };

const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv;
const fixtures = new URL("./fixtures/micro-schemas/", import.meta.url);
const validators: Record<MicroKind, ValidateFunction> = (() => {
  const ajv = new Ajv({ allErrors: true, strict: true });
  addFormats(ajv);
  const load = (f: string) => ajv.compile(JSON.parse(readFileSync(new URL(f, fixtures), "utf8")) as object);
  return {
    ping: load("ping_response.json"),
    info: load("info_response.json"),
    stats: load("stats_response.json"),
  };
})();

/** A reply (or the CLI's re-encoding of one) against the official schema of its kind. */
export function checkMicroSchema(kind: MicroKind, data: Uint8Array | string): SchemaCheck {
  let v: unknown;
  try {
    v = JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data));
  } catch (e) {
    return { ok: false, stage: "json", errors: [(e as Error).message] };
  }
  const validate = validators[kind];
  if (validate(v)) return { ok: true, normalized: v };
  return {
    ok: false,
    stage: "schema",
    errors: (validate.errors ?? []).map((e) => `${e.instancePath || "/"} ${e.message ?? ""}`),
  };
}
