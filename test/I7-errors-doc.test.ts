/** The README's "Errors" table and the error-code registry (services/lib/errors.ts) agree. */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { it } from "node:test";
import { ErrorCode } from "../services/mod.ts";

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
