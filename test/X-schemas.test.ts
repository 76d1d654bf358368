/**
 * The wire contracts in schemas/: the generated types are fresh (`scripts/gen-schemas.ts --check`),
 * every file is a draft-07 JSON Schema that ajv accepts and compiles in strict mode (with every other
 * schema loaded, so cross-file $refs resolve), and every `$id` is the file's path under schemas/.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { Ajv, type Options } from "ajv";
import addFormatsModule from "ajv-formats";

// as in services/lib/schema-registry.ts: the standard formats (date-time) are known
const addFormats = addFormatsModule as unknown as (a: Ajv) => Ajv;

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const SCHEMAS = path.join(REPO, "schemas");
const DRAFT_07 = "http://json-schema.org/draft-07/schema#";
/**
 * ajv's strict mode as services/lib/schema-registry.ts runs it. strictRequired stays off there on
 * purpose: op.json's `if`/`then: {required: ["value"]}` names a property defined by the parent
 * schema, which is valid draft-07 but trips that one ajv heuristic.
 */
const STRICT: Options = { strict: true, strictRequired: false };

/** Every file under a directory (relative paths, `/`-separated, sorted). */
function filesUnder(dir: string, rel = ""): string[] {
  return readdirSync(path.join(dir, rel), { withFileTypes: true })
    .flatMap((e) => {
      const p = rel ? `${rel}/${e.name}` : e.name;
      return e.isDirectory() ? filesUnder(dir, p) : [p];
    })
    .sort();
}

function runGenCheck(script: string): { status: number | null; output: string } {
  const r = spawnSync(process.execPath, ["--import", "tsx", script, "--check"], {
    cwd: REPO,
    encoding: "utf8",
    timeout: 20000,
  });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

describe("schemas/", () => {
  const files = filesUnder(SCHEMAS);
  const parsed = new Map<string, Record<string, unknown>>();

  it("holds JSON files only, each a JSON object", () => {
    assert.ok(files.length > 0, "schemas/ is empty");
    for (const f of files) {
      assert.match(f, /\.json$/, `${f}: not a .json file`);
      let v: unknown;
      assert.doesNotThrow(() => {
        v = JSON.parse(readFileSync(path.join(SCHEMAS, f), "utf8"));
      }, `${f}: not valid JSON`);
      assert.ok(v !== null && typeof v === "object" && !Array.isArray(v), `${f}: not a JSON object`);
      parsed.set(f, v as Record<string, unknown>);
    }
  });

  it("every $id is the file's path under schemas/, and every $schema is draft-07", () => {
    for (const [f, s] of parsed) {
      assert.equal(s.$id, f, `${f}: $id`);
      assert.equal(s.$schema, DRAFT_07, `${f}: $schema`);
    }
  });

  it("every schema is valid against the draft-07 meta-schema and compiles in ajv strict mode", () => {
    const ajv = addFormats(new Ajv(STRICT));
    for (const [f, s] of parsed) {
      const ok = ajv.validateSchema(s);
      assert.ok(ok, `${f}: not a valid draft-07 schema: ${ajv.errorsText(ajv.errors)}`);
    }
    for (const s of parsed.values()) ajv.addSchema(s);
    for (const f of parsed.keys()) {
      let fn: ReturnType<Ajv["getSchema"]>;
      assert.doesNotThrow(() => {
        fn = ajv.getSchema(f);
      }, `${f}: ajv strict mode refuses it`);
      assert.equal(typeof fn, "function", `${f}: did not compile`);
    }
  });

  it("the generated types are fresh: scripts/gen-schemas.ts --check exits 0", () => {
    const r = runGenCheck(path.join(REPO, "scripts/gen-schemas.ts"));
    assert.equal(r.status, 0, `gen-schemas --check failed: ${r.output}`);
  });

  it("gen-schemas --check does fail on a stale generated file (copy of the repo's script and schemas)", () => {
    const tmp = mkdtempSync(path.join(os.tmpdir(), "syncd-schemas-"));
    try {
      cpSync(SCHEMAS, path.join(tmp, "schemas"), { recursive: true });
      mkdirSync(path.join(tmp, "scripts"));
      mkdirSync(path.join(tmp, "services/lib"), { recursive: true });
      cpSync(path.join(REPO, "scripts/gen-schemas.ts"), path.join(tmp, "scripts/gen-schemas.ts"));
      cpSync(path.join(REPO, "services/lib/schemas.gen.ts"), path.join(tmp, "services/lib/schemas.gen.ts"));
      const script = path.join(tmp, "scripts/gen-schemas.ts");
      assert.equal(runGenCheck(script).status, 0, "the copy starts fresh");
      const first = path.join(tmp, "schemas", files[0] as string);
      const s = JSON.parse(readFileSync(first, "utf8")) as Record<string, unknown>;
      writeFileSync(first, JSON.stringify({ ...s, description: `${String(s.description ?? "")} (changed)` }));
      const r = runGenCheck(script);
      assert.equal(r.status, 1, `expected exit 1 for a stale file: ${r.output}`);
      assert.match(r.output, /stale/);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
