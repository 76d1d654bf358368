/**
 * up.sh's site ports (scripts/lib/topology.ts planSitePorts): any number of sites gets a layout
 * that leaves the hub's ports alone, or a clear refusal.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { planSitePorts } from "../../scripts/lib/topology.ts";

const HUB = [7222, 7223, 7422];

test("X the default layout keeps a, b, c on 4222, 5222, 6222 and puts the 4th site past the hub's 7222", () => {
  const p = planSitePorts(12, 4222, 1000, HUB, true)!;
  assert.deepEqual(
    p.slice(0, 5).map((x) => x.client),
    [4222, 5222, 6222, 8222, 9222],
  );
  assert.equal(p.length, 12);
  const all = p.flatMap((x) => [x.client, x.http]);
  assert.equal(new Set([...all, ...HUB]).size, all.length + HUB.length, "no port twice");
  assert.ok(p.every((x) => x.http === x.client + 1));
});

test("X a mesh too large for steps of 1000 takes steps of 10 unless a step was asked for", () => {
  const p = planSitePorts(1000, 4222, 1000, HUB, true)!;
  assert.equal(p.length, 1000);
  assert.deepEqual(
    p.slice(0, 3).map((x) => x.client),
    [4222, 4232, 4242],
  );
  const all = p.flatMap((x) => [x.client, x.http]);
  assert.equal(new Set([...all, ...HUB]).size, all.length + HUB.length, "no port twice");
  assert.ok(all.every((x) => x <= 65535));
  assert.equal(planSitePorts(100, 4222, 1000, HUB, false), undefined);
  assert.equal(planSitePorts(10_000, 4222, 1000, HUB, true), undefined);
});
