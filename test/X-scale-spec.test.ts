/** parseScale: the SCALE spec of scripts/up.sh, scripts/site.sh and startMesh({scale}). */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { formatScale, parseScale } from "../scripts/lib/services.ts";

describe("parseScale", () => {
  test("no spec: one instance of each kind", () => {
    assert.deepEqual(parseScale(), { clock: 1, watcher: 1, merger: 1, reconciler: 1 });
    assert.deepEqual(parseScale(""), { clock: 1, watcher: 1, merger: 1, reconciler: 1 });
  });

  test("named kinds get their count, unnamed kinds 1", () => {
    assert.deepEqual(parseScale("merger=3,watcher=2,clock=2"), {
      clock: 2,
      watcher: 2,
      merger: 3,
      reconciler: 1,
    });
  });

  test("spaces, commas and a syncd- prefix are accepted; 0 means not started", () => {
    assert.deepEqual(parseScale(" merger=2  syncd-reconciler=0, "), {
      clock: 1,
      watcher: 1,
      merger: 2,
      reconciler: 0,
    });
  });

  test("object form", () => {
    assert.deepEqual(parseScale({ merger: 4 }), { clock: 1, watcher: 1, merger: 4, reconciler: 1 });
  });

  test("bad specs are refused with a message naming the problem", () => {
    assert.throws(() => parseScale("mergr=2"), /unknown service kind "mergr"/);
    assert.throws(() => parseScale("merger"), /bad scale entry "merger"/);
    assert.throws(() => parseScale("merger=-1"), /bad count for merger/);
    assert.throws(() => parseScale("merger=1.5"), /bad count for merger/);
    assert.throws(() => parseScale("merger=x"), /bad count for merger/);
    assert.throws(() => parseScale("merger=65"), /bad count for merger/);
    assert.throws(() => parseScale("merger=1,merger=2"), /given twice/);
    assert.throws(() => parseScale({ merger: 2.5 }), /bad count for merger/);
  });

  test("formatScale round-trips", () => {
    const s = parseScale("merger=3,reconciler=0");
    assert.equal(formatScale(s), "clock=1,watcher=1,merger=3,reconciler=0");
    assert.deepEqual(parseScale(formatScale(s)), s);
  });
});
