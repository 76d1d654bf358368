/**
 * I4 per-key monotonic (DESIGN §4): a local write stamped after the site holds version v of a key
 * gets a version greater than v — by the watcher's `max(clock tick, _meta.ts + 1)`, whatever the
 * clock says and whatever the `_meta` cache says.
 *
 * - On a real mesh: a version far ahead of the site's clock (within the skew limit) is planted
 *   behind the services' back, so the clock never observes it; the local overwrite that follows
 *   must be stamped exactly `_meta.ts + 1` (the clock alone would stamp it below) and win at both
 *   sites.
 * - In the model: the real `stampEntry` and `applyOp` read `_meta` through a cache that returns
 *   stale entries (as `CachedMetaStore` does while its watch lags), with a clock far behind the
 *   remote versions: every stamp is above every version the key held before it.
 *   FC_SEED / FC_RUNS replay or deepen it (test/fc.ts).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  CasConflictError,
  type MergeDeps,
  type MetaEntry,
  type MetaStoreLike,
  type Op,
  type Version,
  type WatcherDeps,
  applyOp,
  compareVersions,
  makeOp,
  ownOpSettled,
  parseOp,
  stampEntry,
} from "../services/mod.ts";
import { fcParams } from "./fc.ts";
import { plantVersion, quiet, until, versions, withLinkedMesh } from "./helpers.ts";
import type { Call } from "./sim/sched.ts";
import { SimBucket, SimMeta, simOutLog } from "./sim/stores.ts";

describe("I4 a local overwrite is stamped above the version it replaced (real mesh)", () => {
  const { nc, kv } = withLinkedMesh({
    sites: ["a", "b"],
    serviceArgs: ["--reconcile-interval", "0"],
  });

  it("I4 a version 20 s ahead of the clock, never observed by it: the overwrite gets exactly _meta.ts + 1 and wins at both sites", async () => {
    const key = "i4.ahead";
    // 20 s ahead (the skew limit is 60 s); node id above site-a, so an equal ts would lose too
    const ahead = (Date.now() + 20_000) * 1000;
    await plantVersion(nc.a!, { key, ts: ahead, node_id: "site-z", value: "planted" });
    await quiet(nc); // the watcher has seen the planted entry (a merger's write: skipped)
    await kv.a!.put(key, "overwrite");
    const v = await until(
      async () => {
        const x = (await versions(nc.a!)).get(key);
        return x?.node_id === "site-a" ? x : null;
      },
      { message: "the overwrite was never stamped" },
    );
    assert.equal(v.ts, ahead + 1, `stamped ${v.ts}, the version replaced is ${ahead}: not _meta.ts + 1`);
    await until(async () => (await kv.b!.get(key))?.string() === "overwrite", {
      message: "the overwrite did not reach b",
    });
    await quiet(nc);
    for (const s of ["a", "b"]) {
      assert.equal((await kv[s]!.get(key))?.string(), "overwrite", `at ${s}`);
      const x = (await versions(nc[s]!)).get(key);
      assert.deepEqual([x?.ts, x?.node_id], [ahead + 1, "site-a"], `at ${s}`);
    }
  });
});

/**
 * `_meta` as one service instance sees it through a watch-fed cache that lags: `get` answers from
 * what this instance last saw (possibly old) unless the key is marked stale; a lost compare-and-set
 * marks it stale, so the next read goes to the store — the contract `CachedMetaStore` keeps.
 */
class LaggingCache implements MetaStoreLike {
  private readonly seen = new Map<string, MetaEntry | null>();
  private readonly stale = new Set<string>();
  staleReads = 0;

  constructor(
    private readonly store: MetaStoreLike,
    private readonly fresh: (key: string) => Version | null,
  ) {}

  async get(key: string): Promise<MetaEntry | null> {
    if (this.seen.has(key) && !this.stale.has(key)) {
      const e = this.seen.get(key) ?? null;
      if (JSON.stringify(e?.version ?? null) !== JSON.stringify(this.fresh(key))) this.staleReads++;
      return e;
    }
    this.stale.delete(key);
    const e = await this.store.get(key);
    this.seen.set(key, e);
    return e;
  }

  async cas(key: string, version: Version, expected: MetaEntry | null): Promise<number> {
    try {
      const revision = await this.store.cas(key, version, expected);
      this.seen.set(key, { version, revision });
      return revision;
    } catch (err) {
      if (err instanceof CasConflictError) this.stale.add(key);
      throw err;
    }
  }

  invalidate(key: string): void {
    this.stale.add(key);
  }
}

const direct: Call = async (_label, effect) => effect();
const enc = new TextEncoder();

/** One step of a scenario: a remote op merged, or a local write (then stamped). */
type Step =
  | { kind: "remote"; key: string; ts: number; node: string; deleted: boolean }
  | { kind: "local"; key: string; deleted: boolean }
  | { kind: "stamp" };

/** The op of remote step `i`: a version of another node, value `r<i>`. */
function remoteOp(s: Extract<Step, { kind: "remote" }>, i: number) {
  return makeOp({
    bucket: "config",
    key: s.key,
    ts: s.ts,
    nodeId: s.node,
    deleted: s.deleted,
    value: enc.encode(`r${i}`),
  });
}

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  fc.record({
    kind: fc.constant("remote" as const),
    key: fc.constantFrom("k1", "k2"),
    ts: fc.integer({ min: 1, max: 1_000_000 }),
    node: fc.constantFrom("site-b", "site-c", "hand"),
    deleted: fc.boolean(),
  }),
  fc.record({ kind: fc.constant("local" as const), key: fc.constantFrom("k1", "k2"), deleted: fc.boolean() }),
  fc.constant({ kind: "stamp" as const }),
);

describe("I4 model: stale _meta reads (a lagging watch-fed cache) and a clock far behind", () => {
  it("I4 every stamp is above every version the key held before it, with stale reads in the watcher and in two mergers", async (t) => {
    let staleReads = 0;
    let stamps = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(stepArb, { minLength: 1, maxLength: 40 }), async (steps) => {
        const meta = new SimMeta(direct, "site-a");
        const data = new SimBucket(direct, "site-a");
        const peek = (k: string) => meta.peek(k);
        const caches = [
          new LaggingCache(meta.as("watcher"), peek),
          new LaggingCache(meta.as("merger"), peek),
          new LaggingCache(meta.as("merger"), peek),
        ];
        const mergers: MergeDeps[] = caches.slice(1).map((c) => ({
          buckets: new Map([["config", { meta: c, data, maxValueSize: -1 }]]),
          observe: async () => {}, // the clock never hears of the remote versions
          checkSkew: () => {},
        }));
        let clock = 0;
        const watcher: WatcherDeps = {
          site: "a",
          nodeId: "site-a",
          bucket: "config",
          meta: caches[0]!,
          tick: async () => ++clock,
          ...simOutLog("SYNCD_OUT_a"),
        };
        let stamped = 0; // the local writes stamped so far (in revision order)
        const stampNext = async () => {
          const locals = data.log.filter((e) => e.version === null);
          const e = locals[stamped];
          if (!e) return;
          stamped++;
          await stampEntry(watcher, { ...e, headers: null });
        };
        for (const [i, s] of steps.entries()) {
          if (s.kind === "remote") {
            const op = remoteOp(s, i);
            await applyOp(mergers[i % 2]!, op);
          } else if (s.kind === "local") {
            await (s.deleted ? data.delete(s.key) : data.put(s.key, enc.encode(`l${i}`)));
          } else await stampNext();
        }
        while (stamped < data.log.filter((e) => e.version === null).length) await stampNext();
        staleReads += caches.reduce((n, c) => n + c.staleReads, 0);
        // I4: each watcher commit is above every version the key held before it
        const held = new Map<string, Version[]>();
        for (const c of meta.history) {
          const before = held.get(c.key) ?? [];
          if (c.caller === "watcher") {
            stamps++;
            for (const v of before)
              assert.ok(
                compareVersions(c.version, v) > 0,
                `stamp ${c.version.ts}/${c.version.node_id} of ${c.key} is not above ${v.ts}/${v.node_id}, held before it`,
              );
          }
          held.set(c.key, [...before, c.version]);
        }
      }),
      fcParams({ numRuns: 300 }),
    );
    t.diagnostic(`${stamps} stamps checked; ${staleReads} stale reads served`);
    assert.ok(staleReads > 0 && stamps > 0, "the caches never served a stale read: the test proves nothing");
  });
});

describe("I1 model: a site's own ops back from the hub, settled by `_meta` alone", () => {
  it("I1 an own op the merger acks without a store call is one that applying would leave as it is (duplicate or stale, nothing written), also at a site rebuilt empty", async (t) => {
    let settled = 0;
    let checked = 0;
    const sim = () => {
      const meta = new SimMeta(direct, "site-a");
      const data = new SimBucket(direct, "site-a");
      const merger: MergeDeps = {
        buckets: new Map([["config", { meta: meta.as("merger"), data, maxValueSize: -1 }]]),
        observe: async () => {},
        checkSkew: () => {},
      };
      return { meta, data, merger };
    };
    // an own op back from the hub: when `_meta` settles it, applying it must change nothing
    const echo = async ({ meta, data, merger }: ReturnType<typeof sim>, ops: Op[]) => {
      for (const op of ops) {
        checked++;
        const fast = ownOpSettled(await meta.get(op.key), op);
        if (fast === null) {
          await applyOp(merger, op);
          continue;
        }
        settled++;
        const [commits, entries] = [meta.history.length, data.log.length];
        const r = await applyOp(merger, op);
        assert.ok(
          r.result === "duplicate" || r.result === "stale",
          `settled ${fast} but applying gave ${r.result}: ${JSON.stringify(op)}`,
        );
        assert.equal(meta.history.length, commits, "applying it would have committed to _meta");
        assert.equal(data.log.length, entries, "applying it would have written the bucket");
      }
    };
    await fc.assert(
      fc.asyncProperty(fc.array(stepArb, { minLength: 1, maxLength: 40 }), async (steps) => {
        const site = sim();
        const { data } = site;
        const own: Op[] = [];
        let clock = 0;
        const watcher: WatcherDeps = {
          site: "a",
          nodeId: "site-a",
          bucket: "config",
          meta: site.meta.as("watcher"),
          tick: async () => ++clock,
          ...simOutLog("SYNCD_OUT_a", (_s, d) => own.push(parseOp(d))),
        };
        let stamped = 0;
        let back = 0;
        for (const [i, s] of steps.entries()) {
          if (s.kind === "remote") {
            const op = remoteOp(s, i);
            await applyOp(site.merger, op);
          } else if (s.kind === "local") {
            await (s.deleted ? data.delete(s.key) : data.put(s.key, enc.encode(`l${i}`)));
          } else {
            const e = data.log.filter((x) => x.version === null)[stamped];
            if (e) {
              stamped++;
              await stampEntry(watcher, { ...e, headers: null });
            }
            // the FEED brings them back at any later point
            if (i % 2 === 0) {
              await echo(site, own.slice(back));
              back = own.length;
            }
          }
        }
        await echo(site, own.slice(back));
        // the site rebuilt empty under its name (wiped `_meta` and bucket): its old ops come back and apply
        const rebuilt = sim();
        await echo(rebuilt, own);
        const greatest = new Map<string, Op>();
        for (const o of own) {
          const g = greatest.get(o.key);
          if (!g || compareVersions(o, g) > 0) greatest.set(o.key, o);
        }
        for (const [k, o] of greatest) {
          const v = rebuilt.meta.peek(k);
          assert.deepEqual(v && [v.ts, v.node_id, v.deleted], [o.ts, o.node_id, o.op === "delete"], k);
        }
      }),
      fcParams({ numRuns: 300 }),
    );
    t.diagnostic(`${checked} own ops back, ${settled} settled by _meta alone`);
    assert.ok(settled > 0, "no own op was settled by _meta alone: the test proves nothing");
  });
});
