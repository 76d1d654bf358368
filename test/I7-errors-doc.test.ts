/** The README's "Errors" table and the error-code registry (services/lib/errors.ts) agree; so do its Health table and the condition registry (services/lib/health.ts). */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { it } from "node:test";
import { Conditions, ErrorCode } from "../services/mod.ts";

it("I7 README's Errors table lists every registered code with its status, and nothing else", () => {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
  const section = readme.split(/^## Errors$/m)[1]?.split(/^## /m)[0] ?? "";
  const rows = [...section.matchAll(/^\| `(SYNCD_ERR_[A-Z0-9_]+)` \| (\d{3}) \|/gm)].map((m) => [
    m[1]!,
    Number(m[2]),
  ]);
  const registry = Object.entries(ErrorCode).map(([code, e]) => [code, e.status]);
  assert.ok(rows.length > 0, "no Errors table in README.md");
  assert.deepEqual(
    [...rows].sort(),
    [...registry].sort(),
    "README.md Errors table and services/lib/errors.ts differ",
  );
});

it("I7 README's Health table lists every condition code of the registry, and nothing else", () => {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
  const section = readme.split(/^### Health$/m)[1]?.split(/^#{2,3} /m)[0] ?? "";
  const rows = [...section.matchAll(/^\| `([A-Z0-9_]+)` \|/gm)].map((m) => m[1]!);
  assert.ok(rows.length > 0, "no conditions table in README.md's Health section");
  assert.deepEqual(
    [...rows].sort(),
    Object.values(Conditions).sort(),
    "README.md Health table and services/lib/health.ts Conditions differ",
  );
});
