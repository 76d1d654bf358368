/**
 * docs/SPEC.md, the README and the test tree in step: every invariant I1–I7 names at least one test
 * file, every test file the page names exists, every test file is in the page's file table under the
 * invariant(s) its name carries, every row of the README's "What happens when…" table is in the
 * page, and `TEST_FILTER=I<n>` finds at least one file for each invariant.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";

const ROOT = path.resolve(import.meta.dirname, "..");
const page = readFileSync(path.join(ROOT, "docs/SPEC.md"), "utf8");
const readme = readFileSync(path.join(ROOT, "README.md"), "utf8");
const INVARIANTS = ["I1", "I2", "I3", "I4", "I5", "I6", "I7"];

/** Every *.test.ts under test/, as a repo-relative path. */
function testFiles(dir = "test"): string[] {
  return readdirSync(path.join(ROOT, dir), { withFileTypes: true }).flatMap((e) => {
    const rel = `${dir}/${e.name}`;
    if (e.isDirectory()) return e.name === "fixtures" ? [] : testFiles(rel);
    return e.name.endsWith(".test.ts") ? [rel] : [];
  });
}

/** The text of a `## ` section of a markdown page (up to the next `## `). */
function section(md: string, heading: RegExp): string {
  const lines = md.split("\n");
  const start = lines.findIndex((l) => l.startsWith("## ") && heading.test(l));
  if (start < 0) return "";
  const end = lines.findIndex((l, i) => i > start && l.startsWith("## "));
  return lines.slice(start + 1, end < 0 ? undefined : end).join("\n");
}

const named = (md: string) => [...md.matchAll(/`(test\/[\w/.-]+\.test\.ts)`/g)].map((m) => m[1]!);

/** The page's "Every test file" table: file → the invariants (or X) it checks. */
function fileTable(): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const m of section(page, /Every test file/).matchAll(/^\| `(test\/[^`]+)` \| ([^|]+) \|$/gm))
    out.set(m[1]!, m[2]!.match(/\bI[1-7]\b|^X\b/g) ?? []);
  return out;
}

/** The first column of a markdown table inside a section. */
function firstColumn(md: string): string[] {
  return [...md.matchAll(/^\| ([^|]+?) \|/gm)]
    .map((m) => m[1]!.trim())
    .filter((c) => c !== "failure" && !/^-+$/.test(c));
}

describe("X docs/SPEC.md keeps invariants, README and tests in step", () => {
  it("every invariant I1–I7 has a section naming at least one test file that exists", () => {
    for (const inv of INVARIANTS) {
      const files = named(section(page, new RegExp(`^## ${inv} `)));
      assert.ok(files.length > 0, `${inv}: no section, or it names no test file`);
      for (const f of files) assert.ok(existsSync(path.join(ROOT, f)), `${inv}: ${f} does not exist`);
    }
  });

  it("every test file the page names exists", () => {
    const missing = [...new Set(named(page))].filter((f) => !existsSync(path.join(ROOT, f)));
    assert.deepEqual(missing, []);
  });

  it("every test file is in the file table, under the invariants its name carries (X- files under X)", () => {
    const table = fileTable();
    const files = testFiles().sort();
    assert.deepEqual(
      files.filter((f) => !table.has(f)),
      [],
      "test files missing from the page's table",
    );
    for (const f of files) {
      const checks = table.get(f)!;
      assert.ok(checks.length > 0, `${f}: maps to no invariant`);
      const base = path.basename(f);
      const inName = base.match(/I[1-7](?=-)/g) ?? [];
      if (inName.length === 0)
        assert.deepEqual(checks, ["X"], `${f}: not named after an invariant, so it must be an X file`);
      for (const inv of inName) assert.ok(checks.includes(inv), `${f}: named ${inv}, listed as ${checks}`);
    }
    assert.deepEqual(
      [...table.keys()].filter((f) => !files.includes(f)),
      [],
      "files in the table that are not test files",
    );
  });

  it("TEST_FILTER=I<n> finds at least one test file for every invariant", () => {
    const files = testFiles();
    for (const inv of INVARIANTS)
      assert.ok(
        files.some((f) => f.includes(inv)),
        `no test file path contains ${inv}`,
      );
  });

  it('every row of the README\'s "What happens when…" table is in the page, with a test that exists', () => {
    const after = readme.slice(readme.indexOf("**What happens when…**"));
    const table = after.slice(after.indexOf("\n|"), after.indexOf("\n\n", after.indexOf("\n|")));
    const readmeRows = firstColumn(table);
    assert.ok(readmeRows.length >= 5, `README rows: ${readmeRows}`);
    const spec = section(page, /What happens when/);
    const specRows = new Map(
      [...spec.matchAll(/^\| ([^|]+?) \| (.+) \|$/gm)].map((m) => [m[1]!.trim(), m[2]!] as const),
    );
    for (const row of readmeRows) {
      const tests = specRows.get(row);
      assert.ok(tests !== undefined, `README row "${row}" is not in docs/SPEC.md`);
      assert.ok(named(tests).length > 0, `"${row}": no test named`);
    }
  });

  it("every invariant row of the README's Guarantees table is a section of the page", () => {
    const rows = [...section(readme, /^## Guarantees/).matchAll(/^\| \*\*(I[1-7]) [^*]+\*\* \|/gm)].map(
      (m) => m[1]!,
    );
    assert.deepEqual(rows, INVARIANTS);
  });

  it("each test file named after an invariant has a test or suite titled with it", () => {
    for (const f of testFiles()) {
      const src = readFileSync(path.join(ROOT, f), "utf8");
      for (const inv of path.basename(f).match(/I[1-7](?=-)/g) ?? [])
        assert.match(
          src,
          new RegExp(`\\b(describe|it|test)\\(\\s*["'\`][^"'\`]*\\b${inv}\\b`),
          `${f}: no describe/it/test title mentions ${inv}`,
        );
    }
  });
});
