/**
 * ajv over every schema of schemas/ (through the generated module, so types and validators share
 * one source). `check(id, data)` returns the typed value or throws SyncdError(SYNCD_ERR_SCHEMA) with a
 * message naming the field.
 */
import { Ajv, type ErrorObject, type ValidateFunction } from "ajv";
import addFormatsModule from "ajv-formats";
import { SyncdError } from "./errors.ts";
import { type SchemaId, schemas } from "./schemas.gen.ts";

export type { SchemaId };

const ajv = new Ajv({ allErrors: false, strict: true, strictRequired: false, useDefaults: false });
// ajv-formats is CommonJS: its default export arrives as the module object under NodeNext.
const addFormats = addFormatsModule as unknown as (a: Ajv) => Ajv;
addFormats(ajv);
for (const s of Object.values(schemas)) ajv.addSchema(s as object);
const compiled = new Map<string, ValidateFunction>();

function validator(id: SchemaId): ValidateFunction {
  let v = compiled.get(id);
  if (!v) {
    const fn = ajv.getSchema(id);
    if (!fn) throw new Error(`no schema ${id}`);
    v = fn;
    compiled.set(id, v);
  }
  return v;
}

/** A person-readable description of the first schema error, naming the field. */
export function describe(err: ErrorObject | undefined): string {
  if (!err) return "invalid";
  const path = err.instancePath ? err.instancePath.slice(1).replaceAll("/", ".") : "";
  const p = err.params as Record<string, unknown>;
  switch (err.keyword) {
    case "required":
      return `missing field "${path ? `${path}.` : ""}${String(p.missingProperty)}"`;
    case "additionalProperties":
      return `unknown field "${path ? `${path}.` : ""}${String(p.additionalProperty)}"`;
    case "enum":
      return `field "${path}" must be one of ${JSON.stringify(p.allowedValues)}`;
    case "pattern":
      return `field "${path}" has an invalid format`;
    case "if":
      return `${path ? `field "${path}": ` : ""}${err.message}`;
    default:
      return path ? `field "${path}" ${err.message}` : `payload ${err.message}`;
  }
}

/** Validate without throwing: the first error's description, or null when valid. */
export function validate(id: SchemaId, data: unknown): string | null {
  const v = validator(id);
  if (v(data)) return null;
  const errs = v.errors ?? [];
  // `if/then` reports its own branch error first; the branch error names the field.
  const first = errs.find((e) => e.keyword !== "if") ?? errs[0];
  return describe(first);
}

/** Validate and return the value typed by its schema, or throw SyncdError(SYNCD_ERR_SCHEMA). */
export function check<T>(id: SchemaId, data: unknown): T {
  const problem = validate(id, data);
  if (problem !== null) throw new SyncdError("SYNCD_ERR_SCHEMA", problem);
  return data as T;
}
