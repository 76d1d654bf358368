import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  type MetaEntry,
  type MetaStoreLike,
  Outcome,
  type Version,
  type WatcherDeps,
  bucketHolds,
  covered,
  pendingLocal,
  stampEntry,
} from "../../services/mod.ts";
/**
 * I3 across bucket incarnations (issue #12 point 3): a revision `_meta` recorded in an earlier
 * incarnation of the bucket (deleted and created again: revisions restart at 1) never makes a new
 * local write look superseded or already published, also before the new incarnation is noticed.
 */
import { SimOpLog } from "../sim/stores.ts";

const enc = new TextEncoder();

function memMeta(init: Record<string, Version>): MetaStoreLike & { map: Map<string, MetaEntry> } {
  const map = new Map<string, MetaEntry>(
    Object.entries(init).map(([k, v]) => [k, { version: v, revision: 1 }]),
  );
  return {
    map,
    get: async (k) => map.get(k) ?? null,
    cas: async (k, v, exp) => {
      assert.equal(map.get(k)?.revision ?? null, exp?.revision ?? null);
      const revision = (exp?.revision ?? 0) + 1;
      map.set(k, { version: v, revision });
      return revision;
    },
  };
}

function watcher(meta: MetaStoreLike, extra: Partial<WatcherDeps>) {
  const published: { msgID: string; data: string }[] = [];
  const log = new SimOpLog();
  const deps: WatcherDeps = {
    site: "a",
    nodeId: "a",
    bucket: "config",
    meta,
    tick: async () => 50,
    js: {
      publish: async (subject: string, data?: unknown, opts?: { msgID?: string }) => {
        published.push({ msgID: opts?.msgID ?? "", data: new TextDecoder().decode(data as Uint8Array) });
        return { stream: "OUT", seq: log.record(subject, data as Uint8Array), duplicate: false };
      },
    } as WatcherDeps["js"],
    jsm: log.reader,
    ...extra,
  };
  return { deps, published };
}

const old = (rev: number): Version => ({ ts: 100, node_id: "a", deleted: false, rev, inc: 1 });
const entry = (rev: number) => ({ key: "k", rev, deleted: false, value: enc.encode("new"), headers: null });

describe("I3 revisions of another incarnation", () => {
  it("a new write at the same revision as an old stamp is published anew, above it, with a new msg id", async () => {
    const meta = memMeta({ k: old(5) });
    const { deps, published } = watcher(meta, { incarnation: () => 2 });
    assert.equal(await stampEntry(deps, entry(5)), Outcome.published);
    const op = JSON.parse(published[0]!.data);
    assert.equal(op.value, "new");
    assert.ok(op.ts > 100);
    assert.equal(published[0]!.msgID, "a.config@2.5");
    assert.equal(meta.map.get("k")!.version.inc, 2);
  });

  it("a new write below an old stamp's revision is not superseded", async () => {
    const { deps, published } = watcher(memMeta({ k: old(9) }), { incarnation: () => 2 });
    assert.equal(await stampEntry(deps, entry(3)), Outcome.published);
    assert.equal(published.length, 1);
  });

  it("before the new incarnation is noticed, the bucket's latest revision unmasks the old stamp", async () => {
    const { deps } = watcher(memMeta({ k: old(9) }), { incarnation: () => 1, latestRev: async () => 3 });
    assert.equal(await stampEntry(deps, entry(3)), Outcome.published);
    // same incarnation and a newer entry in the bucket: superseded, as before
    const w2 = watcher(memMeta({ k: old(9) }), { incarnation: () => 1, latestRev: async () => 9 });
    assert.equal(await stampEntry(w2.deps, entry(3)), Outcome.superseded);
  });

  it("merger: an old incarnation's rev covers nothing; a local write of the new one is pending", () => {
    const l = { rev: 3, deleted: false, value: enc.encode("x"), version: null };
    assert.equal(covered(old(9), l, 2), 0);
    assert.equal(pendingLocal(old(9), l, 2), true);
    // incarnation not noticed yet: the latest entry is older than the rev, so it cannot be this one's
    assert.equal(pendingLocal(old(9), l, 1), true);
    assert.equal(bucketHolds({ ...old(3), inc: 2 }, l, 2), true);
    assert.equal(bucketHolds(old(3), l, 2), false);
  });
});
