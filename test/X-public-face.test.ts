/**
 * The code's shape (house style): tests, bench and scripts reach the services only through their
 * public face `services/mod.ts`; a service never imports another service (they talk over subjects)
 * nor the public face; and no JetStream error is recognised by its message text (services/lib/jserrors.ts).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { test } from "node:test";

const REPO = path.resolve(import.meta.dirname, "..");
const tracked = execFileSync("git", ["ls-files", "*.ts"], { cwd: REPO, encoding: "utf8" })
  .split("\n")
  .filter(Boolean);
const importsOf = (file: string): string[] =>
  [...readFileSync(path.join(REPO, file), "utf8").matchAll(/from "([^"]+)"/g)].map((m) => m[1]!);
const resolved = (file: string, spec: string) =>
  path
    .relative(REPO, path.resolve(REPO, path.dirname(file), spec))
    .split(path.sep)
    .join("/");

test("X public face: tests, bench and scripts import services/ only through services/mod.ts", () => {
  const outside = tracked.filter((f) => /^(test|bench|scripts)\//.test(f));
  assert.ok(outside.length > 20, "found the test, bench and script files");
  const wrong = outside.flatMap((f) =>
    importsOf(f)
      .filter((s) => s.startsWith("."))
      .map((s) => resolved(f, s))
      .filter((r) => r.startsWith("services/") && r !== "services/mod.ts" && !r.endsWith(".mjs"))
      .map((r) => `${f} → ${r}`),
  );
  assert.deepEqual(wrong, [], "import these through services/mod.ts");
});

test("X public face: a service imports only services/lib and its own folder", () => {
  const kinds = ["clock", "watcher", "merger", "reconciler"];
  const wrong = tracked
    .filter((f) => /^services\/(clock|watcher|merger|reconciler)\//.test(f))
    .flatMap((f) => {
      const own = f.split("/")[1]!;
      return importsOf(f)
        .filter((s) => s.startsWith("."))
        .map((s) => resolved(f, s))
        .filter(
          (r) => r === "services/mod.ts" || kinds.some((k) => k !== own && r.startsWith(`services/${k}/`)),
        )
        .map((r) => `${f} → ${r}`);
    });
  assert.deepEqual(wrong, [], "services talk over subjects, never by import");
});

test("X public face: no error is recognised by its message text in the services", () => {
  const textMatch =
    /\/[^/\n]*(not found|does not exist|already in use|already exists|exceeds maximum|wrong last sequence)[^/\n]*\/i?\.test/i;
  const wrong = tracked.filter(
    (f) => f.startsWith("services/") && textMatch.test(readFileSync(path.join(REPO, f), "utf8")),
  );
  assert.deepEqual(wrong, [], "classify by API code (services/lib/jserrors.ts)");
});
