/** parseScale: the SCALE spec of scripts/up.sh, scripts/site.sh and startMesh({scale}). */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { SiteServices, formatScale, parseScale } from "../scripts/lib/services.ts";

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

describe("site.sh --http-port: one port per process", () => {
  const portOf = (argv: string[]): number | undefined => {
    const i = argv.indexOf("--http-port");
    return i < 0 ? undefined : Number(argv[i + 1]);
  };
  const ss = new SiteServices({ site: "a", natsUrl: "nats://x", dir: "/tmp/none", httpPortBase: 9401 });

  test("each kind its own port, as the systemd units (9401–9404); instance n +10·(n−1); an agent the base", () => {
    const kinds = ["clock", "watcher", "merger", "reconciler"] as const;
    assert.deepEqual(
      kinds.map((k) => portOf(ss.argv(k))),
      [9401, 9402, 9403, 9404],
    );
    assert.deepEqual(
      kinds.map((k) => portOf(ss.argv(k, undefined, 2))),
      [9411, 9412, 9413, 9414],
    );
    assert.equal(portOf(ss.argv("agent")), 9401);
    assert.equal(portOf(ss.argv("merger", undefined, 3)), 9423);
  });

  test("without a base no process gets a port", () => {
    const plain = new SiteServices({ site: "a", natsUrl: "nats://x", dir: "/tmp/none" });
    assert.equal(portOf(plain.argv("merger")), undefined);
  });
});
