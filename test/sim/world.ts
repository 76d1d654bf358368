import type { PubAck } from "@nats-io/jetstream";
import fc from "fast-check";
import {
  type ClockMode,
  type Op,
  VersionTree,
  type Versioned,
  applyOp,
  compare,
  compareBytes,
  compareVersions,
  descend,
  isSyncdError,
  makeOp,
  opMsgId,
  opVersioned,
  opsSubject,
  parseOp,
  plan,
  readVersioned,
  treeSource,
  valueHash,
  versionIsOp,
} from "../../services/mod.ts";
/**
 * A simulated mesh: N replicas running the real watcher and merger code, a network that delivers
 * every published op to every other replica in an order the scheduler draws (some copies twice,
 * some never), users writing and deleting at every site, hand-made ops, and anti-entropy repair
 * that mirrors the reconciler (version trees of `_meta`, descend, plan, readVersioned, merge).
 *
 * The model is the set of every op ever published; at quiescence each key must hold the greatest
 * of them by lww.compare (a tombstone: no key) at every replica, in the bucket and in `_meta`.
 */
import { Replica } from "./replica.ts";
import { Choices, FaultError, type Faults, Sim } from "./sched.ts";

export const BUCKET = "config";
export const SITES = ["site-a", "site-b", "site-c", "site-d"] as const;
export const KEYS = ["app/theme", "app.lang", "k"] as const;
const enc = new TextEncoder();
/** Values: short text, multi-byte UTF-8, bytes that are not UTF-8 (base64 on the wire), empty. */
export const VALUES: readonly Uint8Array[] = [
  enc.encode("dark"),
  enc.encode("light"),
  enc.encode("é"),
  new Uint8Array([0xff, 0x00, 0xfe]),
  new Uint8Array(),
];
/** node_id of hand-made ops: the sites' own ids as well as strangers'. */
export const HAND_NODES = [...SITES, "hand", "zz"] as const;
const BASE_MS = 1_700_000_000_000;

/** A user's write at a site. */
export type Write = { site: number; key: number; del: boolean; value: number };
/**
 * A hand-made op injected at a site (`nats pub rep.kv.ops`): either the exact (key, ts, node_id) of
 * an op published before, with its own contents (equal versions, different contents), or a ts near
 * the site's clock.
 */
export type Inject = {
  site: number;
  key: number;
  del: boolean;
  value: number;
  ts: { copy: number } | { delta: number };
  node: number;
};
/** What the network does with one copy of an op for one receiving replica. */
export type Fate = "once" | "twice" | "drop";

export type Scenario = {
  sites: number;
  mode: ClockMode;
  watchers: number;
  mergers: number;
  blockSize: number;
  /** each site's physical clock offset, in ms (HLC) */
  skewMs: number[];
  /** scheduler steps per simulated millisecond */
  stepsPerMs: number;
  writes: Write[];
  injects: Inject[];
  fates: Fate[];
  /** which watcher / merger instance gets each message */
  choices: number[];
  /** store calls that fail before or after their effect (the message is redelivered) */
  faults: Faults;
  /** the watcher's consumer sometimes delivers an entry twice */
  redeliver: boolean;
  /** JetStream drops a re-published msgID (false: the dedupe window has passed) */
  dedupe: boolean;
  /** keys in each watcher's and merger's `_meta` cache (0: none; sim/cache.ts, staler than the real one) */
  metaCache: number;
};

/** Scenarios; `drops` lets the network lose copies (then only repair can converge). */
export function scenario(opts: { drops: boolean; faults: boolean }): fc.Arbitrary<Scenario> {
  const fate: fc.Arbitrary<Fate> = opts.drops
    ? fc.constantFrom<Fate>("once", "once", "twice", "drop")
    : fc.constantFrom<Fate>("once", "once", "twice");
  return fc.record({
    sites: fc.integer({ min: 3, max: 4 }),
    mode: fc.constantFrom<ClockMode>("hlc", "lamport"),
    watchers: fc.integer({ min: 1, max: 2 }),
    mergers: fc.integer({ min: 1, max: 3 }),
    blockSize: fc.integer({ min: 1, max: 8 }),
    skewMs: fc.array(fc.integer({ min: -30, max: 30 }), { minLength: 4, maxLength: 4 }),
    stepsPerMs: fc.integer({ min: 1, max: 20 }),
    writes: fc.array(
      fc.record({
        site: fc.nat(3),
        key: fc.nat(KEYS.length - 1),
        del: fc.constantFrom(false, false, true),
        value: fc.nat(VALUES.length - 1),
      }),
      { minLength: 1, maxLength: 14 },
    ),
    injects: fc.array(
      fc.record({
        site: fc.nat(3),
        key: fc.nat(KEYS.length - 1),
        del: fc.boolean(),
        value: fc.nat(VALUES.length - 1),
        ts: fc.oneof(fc.record({ copy: fc.nat(20) }), fc.record({ delta: fc.integer({ min: -3, max: 3 }) })),
        node: fc.nat(HAND_NODES.length - 1),
      }),
      { maxLength: 4 },
    ),
    fates: fc.array(fate, { maxLength: 60, size: "max" }),
    choices: fc.array(fc.nat(11), { maxLength: 60, size: "max" }),
    faults: opts.faults
      ? fc.record({ rate: fc.constantFrom(0, 0.02, 0.05, 0.1), seed: fc.nat() })
      : fc.constant({ rate: 0, seed: 0 }),
    redeliver: opts.faults ? fc.boolean() : fc.constant(false),
    dedupe: opts.faults ? fc.boolean() : fc.constant(true),
    metaCache: fc.constantFrom(0, 1, 2),
  });
}

/** One op in the model, with where it came from. */
export type Published = { op: Op; from: string; origin: "watcher" | "hand"; rev?: number };

/** What a run did, for coverage numbers. */
export type Stats = {
  steps: number;
  published: number;
  hand: number;
  dropped: number;
  duplicated: number;
  applied: number;
  stale: number;
  duplicate: number;
  superseded: number;
  /** stamps at exactly held.ts + 1 (mostly: the clock was behind and meta.ts + 1 decided) */
  heldPlusOne: number;
  repairRounds: number;
  repaired: number;
  inFlux: number;
  faults: number;
  republished: number;
  /** stamped local writes never published because a newer remote op overtook them first */
  overtaken: number;
  /** messages coalesced into a waiting one of their key (a batch with several versions of a key) */
  coalesced: number;
  /** coalesced batches whose winner failed (kill -9 mid-batch: none of it acked, all redelivered) */
  batchesCut: number;
  /** keys whose log ends with the site's own current version (checked at quiescence) */
  logsChecked: number;
};

const show = (v: { ts: number; node_id: string; deleted?: boolean } | null | undefined): string =>
  v ? `${v.ts}/${v.node_id}${v.deleted ? "/DEL" : ""}` : "none";
const showBytes = (b: Uint8Array | undefined): string =>
  b ? JSON.stringify(Buffer.from(b).toString("latin1")) : "absent";

export class World {
  readonly sim: Sim;
  readonly replicas: Replica[];
  readonly published: Published[] = [];
  readonly violations: string[] = [];
  private readonly msgIds = new Map<string, number>();
  private readonly fates: Fate[];
  private fateIx = 0;
  private outSeq = 0;
  /** each site's OUT log, compacted: the last message per subject */
  private readonly outLast = new Map<string, { seq: number; data: Uint8Array }>();
  readonly stats: Stats = {
    steps: 0,
    published: 0,
    hand: 0,
    dropped: 0,
    duplicated: 0,
    applied: 0,
    stale: 0,
    duplicate: 0,
    superseded: 0,
    heldPlusOne: 0,
    repairRounds: 0,
    repaired: 0,
    inFlux: 0,
    faults: 0,
    republished: 0,
    overtaken: 0,
    coalesced: 0,
    batchesCut: 0,
    logsChecked: 0,
  };

  constructor(
    readonly sc: Scenario,
    s: fc.Scheduler,
  ) {
    this.sim = new Sim(s, sc.faults);
    this.fates = sc.fates;
    const choices = new Choices(sc.choices);
    this.replicas = SITES.slice(0, sc.sites).map(
      (site, i) =>
        new Replica(
          this.sim,
          {
            site,
            bucket: BUCKET,
            mode: sc.mode,
            blockSize: sc.blockSize,
            watchers: sc.watchers,
            mergers: sc.mergers,
            redeliver: sc.redeliver,
            metaCache: sc.metaCache,
            nowMs: () => BASE_MS + Math.floor(this.sim.steps / sc.stepsPerMs) + (sc.skewMs[i] ?? 0),
          },
          choices,
          {
            publish: (from, subject, payload, msgID) => this.publish(from, subject, payload, msgID),
            last: (from, subject) => this.outLast.get(`${from.site} ${subject}`) ?? null,
            fail: (where, err) => this.violations.push(`error in ${where}: ${(err as Error)?.stack ?? err}`),
          },
        ),
    );
  }

  /** Start every user write and hand-made op; they run as the scheduler lets them. */
  start(): void {
    const n = this.replicas.length;
    this.sc.writes.forEach((w, i) => {
      const r = this.replicas[w.site % n]!;
      const key = KEYS[w.key]!;
      const done = w.del ? r.bucket.delete(key) : r.bucket.put(key, VALUES[w.value]!);
      done.catch((err: unknown) => this.violations.push(`user write #${i} failed: ${err}`));
    });
    this.sc.injects.forEach((h, i) => {
      const r = this.replicas[h.site % n]!;
      void this.sim.step(`${r.site} hand-made op #${i}`).then(() => this.inject(r, h));
    });
  }

  /** Run to quiescence. */
  async settle(): Promise<void> {
    await this.sim.drain();
    this.stats.steps = this.sim.steps;
    this.stats.faults = this.sim.faults;
  }

  private inject(r: Replica, h: Inject): void {
    let key: string = KEYS[h.key]!;
    let ts: number;
    let node: string = HAND_NODES[h.node]!;
    const base =
      "copy" in h.ts && this.published.length > 0 ? this.published[h.ts.copy % this.published.length]! : null;
    if (base) {
      key = base.op.key;
      ts = base.op.ts;
      node = base.op.node_id;
    } else {
      ts = Math.max(0, r.clock.hw + ("delta" in h.ts ? h.ts.delta : 1));
    }
    const op = makeOp({ bucket: BUCKET, key, ts, nodeId: node, deleted: h.del, value: VALUES[h.value]! });
    this.published.push({ op, from: r.site, origin: "hand" });
    this.stats.hand++;
    // the merger forwards a hand-made op to its site's OUT stream (the peers source it) and applies it
    this.broadcast(r, op);
    r.deliver(op);
  }

  /** The watcher's js.publish: the I2 check, JetStream's dedupe by msgID, then the network. */
  private publish(from: Replica, subject: string, payload: Uint8Array, msgID: string | undefined): PubAck {
    const stream = `SYNCD_OUT_${from.site}`;
    let op: Op;
    try {
      op = parseOp(payload);
    } catch (err) {
      this.violations.push(`${from.site} published an invalid op: ${err}`);
      return { stream, seq: 0, duplicate: false };
    }
    if (subject !== opsSubject(from.site, BUCKET, op.key))
      this.violations.push(`${from.site} published on ${subject}`);
    if (msgID !== undefined && this.sc.dedupe) {
      const seen = this.msgIds.get(msgID);
      if (seen !== undefined) return { stream, seq: seen, duplicate: true };
    }
    const seq = ++this.outSeq;
    if (msgID !== undefined) this.msgIds.set(msgID, seq);
    this.outLast.set(`${from.site} ${subject}`, { seq, data: payload });
    // an ordered publish sending again, without msgID, an op of the site that lost its place in the
    // log: one it published, or the site's current own version (a stamp of a local write, whose own
    // publish may not have landed yet)
    if (msgID === undefined) {
      const same = JSON.stringify(op);
      if (!this.published.some((p) => p.from === from.site && JSON.stringify(p.op) === same)) {
        const stamp = from.stamps.find(
          (s) => s.key === op.key && s.version.ts === op.ts && s.version.node_id === op.node_id,
        );
        const e = stamp && from.bucket.at(stamp.version.rev);
        const v = opVersioned(op);
        const isStamp =
          e !== undefined &&
          e.version === null &&
          e.key === op.key &&
          e.deleted === v.deleted &&
          (e.deleted || compareBytes(e.value, v.value!) === 0);
        if (!isStamp)
          this.violations.push(`I2 ${from.site} re-published ${same}, never published or stamped`);
        this.published.push({ op, from: from.site, origin: "watcher" });
      }
      this.broadcast(from, op);
      return { stream, seq, duplicate: false };
    }
    // I2: only local writes (entries without headers) are published, each as what it is
    const rev = Number(msgID?.slice(msgID.lastIndexOf(".") + 1));
    const e = from.bucket.at(rev);
    if (msgID !== opMsgId(from.site, BUCKET, rev) || !e) {
      this.violations.push(
        `I2 ${from.site} published ${JSON.stringify(op)} with msgID ${msgID}: no such entry`,
      );
    } else {
      const v = opVersioned(op);
      if (e.version !== null)
        this.violations.push(
          `I2 ${from.site} re-published the replicated write at rev ${rev} (${show(e.version)}) as ${JSON.stringify(op)}`,
        );
      if (
        e.key !== op.key ||
        e.deleted !== v.deleted ||
        (!e.deleted && compareBytes(e.value, v.value!) !== 0)
      )
        this.violations.push(
          `I2 ${from.site} published ${JSON.stringify(op)} for a different entry (rev ${rev})`,
        );
      if (op.node_id !== from.nodeId) this.violations.push(`${from.site} stamped with node_id ${op.node_id}`);
    }
    this.published.push({ op, from: from.site, origin: "watcher", rev });
    this.stats.published++;
    this.broadcast(from, op);
    return { stream, seq, duplicate: false };
  }

  /** Every other replica gets the op: once, twice, or (when the scenario drops) never. */
  private broadcast(from: Replica, op: Op): void {
    const label = `${op.op} ${op.key} ${op.ts}/${op.node_id}`;
    for (const to of this.replicas) {
      if (to === from) continue;
      const fate = this.fates[this.fateIx++] ?? "once";
      const copies = fate === "drop" ? 0 : fate === "twice" ? 2 : 1;
      if (fate === "drop") this.stats.dropped++;
      if (fate === "twice") this.stats.duplicated++;
      for (let c = 0; c < copies; c++)
        void this.sim.step(`net ${from.site}→${to.site} ${label}`).then(() => to.deliver(op));
    }
  }

  /**
   * Anti-entropy as services/reconciler/run.ts `reconcile` does it, without the RPC: each
   * replica's version tree over `_meta` (what its watch-fed index holds: versions and value
   * hashes), `descend` against every peer's tree, `plan` (by version; equal versions with different
   * value hashes move both ways), `readVersioned` at the side that has the key newer, and the
   * merger's `merge` endpoint at the other (see `mergeEndpoint`). A pull for every ordered pair
   * covers reconcile's pull and push. All merges of a round race; rounds repeat until one finds
   * nothing to move. Keys whose value is "in flux" at quiescence are counted (stats.inFlux) and left.
   * (run.ts `hashUnhashed`, for `_meta` written by older code without vh, is not modelled: every
   * put the simulated watchers and mergers commit carries vh.)
   */
  async repair(maxRounds = 8): Promise<void> {
    for (let round = 0; round < maxRounds; round++) {
      const trees = new Map(this.replicas.map((r) => [r, treeOf(r)]));
      const pulls: Promise<void>[] = [];
      for (const a of this.replicas) {
        for (const b of this.replicas) {
          if (a === b) continue;
          const ta = trees.get(a)!;
          const tb = trees.get(b)!;
          const d = await descend(ta, treeSource(tb), { smallCount: 2 });
          if (d.list.length === 0) continue;
          const p = plan(ta.entries(d.list), tb.entries(d.list));
          for (const key of p.pull) pulls.push(this.pull(a, b, key));
        }
      }
      if (pulls.length === 0) return;
      this.stats.repairRounds++;
      await this.settle();
      await Promise.all(pulls);
    }
    this.violations.push(`repair still moving keys after ${maxRounds} rounds`);
  }

  private async pull(to: Replica, from: Replica, key: string): Promise<void> {
    try {
      const known = from.meta.peek(key);
      const vv = await readVersioned(
        { meta: from.meta.as("reconciler"), data: from.bucket, nodeId: from.nodeId },
        key,
        known ? { ts: known.ts, node_id: known.node_id, deleted: known.deleted, vh: known.vh } : undefined,
      );
      if (!vv.ok) {
        this.stats.inFlux++;
        return;
      }
      const op = makeOp({
        bucket: BUCKET,
        key,
        ts: vv.version.ts,
        nodeId: vv.version.node_id,
        deleted: vv.version.deleted,
        value: vv.value,
      });
      await this.mergeEndpoint(to, op);
      this.stats.repaired++;
    } catch (err) {
      if (err instanceof FaultError) return; // the next round tries again
      // a 409 from merge: undecidable while bytes are in flight; the journaled copy decides later
      if (isSyncdError(err) && err.code === "SYNCD_ERR_CONFLICT") return;
      this.violations.push(`error in repair ${from.site}→${to.site} ${key}: ${(err as Error)?.stack ?? err}`);
    }
  }

  /**
   * The merger's `merge` endpoint (services/merger/service.ts): journal the op to the site's IN
   * stream (`syncd.<site>.journal`), then apply it. The journal is one JetStream publish, a step
   * that may fail before its effect (nothing journaled, the request fails: the next run tries
   * again) or after it (journaled, the request fails). Once journaled, the merger's durable
   * consumer applies the op too (`deliver`, redelivered until it succeeds), also when the direct
   * apply dies between the `_meta` commit and the bucket write.
   */
  private async mergeEndpoint(to: Replica, op: Op): Promise<void> {
    await this.sim.call(`${to.site} merger journal ${op.op} ${op.key} ${op.ts}/${op.node_id}`, () =>
      to.deliver(op),
    );
    to.merges.push(await applyOp(to.mergeDeps, op));
  }

  private wasPublished(site: string, rev: number): boolean {
    return this.published.some((p) => p.from === site && p.rev === rev);
  }

  /** The model: per key, the greatest published op by lww.compare. */
  expected(): Map<string, { state: Versioned; op: Op }> {
    const out = new Map<string, { state: Versioned; op: Op }>();
    for (const p of this.published) {
      const state = opVersioned(p.op);
      const cur = out.get(p.op.key);
      if (!cur || compare(state, cur.state) > 0) out.set(p.op.key, { state, op: p.op });
    }
    return out;
  }

  /** I2 (collected while running), I3, I4, errors: violations of the watcher-side invariants. */
  checkLocal(): string[] {
    const out = [...this.violations];
    for (const r of this.replicas) {
      // I3: every local write published once, unless a newer local write of its key superseded it
      const newestLocal = new Map<string, number>();
      for (const e of r.bucket.log) if (!e.version) newestLocal.set(e.key, e.rev);
      for (const e of r.bucket.log) {
        const got = r.outcomes.get(e.rev) ?? [];
        const what = `${r.site} rev ${e.rev} (${e.key}${e.deleted ? " DEL" : ""})`;
        if (got.length === 0 || (!this.sc.redeliver && this.sc.faults.rate === 0 && got.length !== 1)) {
          out.push(`${what} handled ${got.length} times by the watcher: ${got}`);
          continue;
        }
        if (e.version) {
          if (got.some((o) => o !== "skipped_echo")) out.push(`I2 ${what} has headers, watcher said ${got}`);
          continue;
        }
        this.stats.republished += got.filter((o) => o === "republished").length;
        const published = got.filter((o) => o === "published").length;
        if (published > 1) out.push(`I3 ${what} stamped ${published} times`);
        // published by a delivery whose outcome a fault lost (the op is in the model), or republished
        if (published === 1 || this.wasPublished(r.site, e.rev)) continue;
        if (got.every((o) => o === "skipped_superseded") && newestLocal.get(e.key)! > e.rev) {
          this.stats.superseded++;
          continue;
        }
        // Stamped, its publish failed, and a newer remote op overwrote it before the redelivery:
        // the redelivery says superseded and the write is never published. Not the letter of I3
        // (only a newer *local* write may replace it), but the write lost to a newer version anyway,
        // so it changes no outcome (I1 checks that): counted, not failed.
        const stamped = r.stamps.find((s) => s.key === e.key && s.version.rev === e.rev);
        const now = r.meta.peek(e.key);
        if (
          stamped &&
          now &&
          // newer, or a hand-made op of the very same version that wins the tie (a merger wrote it)
          (compareVersions(now, stamped.version) > 0 ||
            (compareVersions(now, stamped.version) === 0 && now.merged === true)) &&
          got.includes("skipped_superseded")
        ) {
          this.stats.overtaken++;
          continue;
        }
        out.push(
          `I3 ${what}: watcher said ${got}, newest local write of the key is rev ${newestLocal.get(e.key)}`,
        );
      }
      // I4: a stamp is above every version the site held for the key
      for (const s of r.stamps) {
        if (s.held && compareVersions(s.version, s.held) <= 0)
          out.push(`I4 ${r.site} stamped ${s.key} ${show(s.version)} while holding ${show(s.held)}`);
      }
      // the per-key compacted log ends with the site's own current version (#11.2): whenever
      // `_meta` holds a stamp of this site, the last op on the key's subject is exactly that op
      for (const [key, v] of r.meta.snapshot()) {
        if (v.merged || v.node_id !== r.nodeId) continue;
        const last = this.outLast.get(`${r.site} ${opsSubject(r.site, BUCKET, key)}`);
        const op = last ? parseOp(last.data) : null;
        this.stats.logsChecked++;
        if (!op || !versionIsOp(v, op))
          out.push(
            `log ${r.site} ${key} ends with ${op ? JSON.stringify(op) : "nothing"}, _meta holds the own ${show(v)} (vh ${v.vh})`,
          );
      }
      // `_meta` only moves up (equal versions: only value → tombstone or a greater value)
      for (const c of r.meta.history) {
        if (!c.prev) continue;
        const d = compareVersions(c.version, c.prev);
        if (d < 0 || (d === 0 && c.prev.deleted && !c.version.deleted))
          out.push(`${r.site} _meta ${c.key} went back: ${show(c.prev)} → ${show(c.version)} (${c.caller})`);
      }
    }
    return out;
  }

  /** I1: every replica's bucket and `_meta` equal the model. */
  checkConverged(): string[] {
    const out: string[] = [];
    const want = this.expected();
    for (const r of this.replicas) {
      const meta = r.meta.snapshot();
      const data = r.bucket.contents();
      for (const [key, { state }] of want) {
        const m = meta.get(key);
        if (!m || m.ts !== state.ts || m.node_id !== state.node_id || m.deleted !== state.deleted)
          out.push(`I1 ${r.site} _meta ${key} = ${show(m)}, model ${show(state)}`);
        // the value hash anti-entropy compares describes the model's value (none for a tombstone)
        else if (m.vh !== (state.deleted ? undefined : valueHash(state.value!)))
          out.push(
            `I1 ${r.site} _meta ${key} vh = ${m.vh}, model ${showBytes(state.value)} (vh ${state.deleted ? "none" : valueHash(state.value!)})`,
          );
        const v = data.get(key);
        const ok = state.deleted ? v === undefined : v !== undefined && compareBytes(v, state.value!) === 0;
        if (!ok)
          out.push(
            `I1 ${r.site} bucket ${key} = ${showBytes(v)}, model ${state.deleted ? "absent" : showBytes(state.value)} (${show(state)})`,
          );
      }
      for (const key of new Set([...meta.keys(), ...data.keys()]))
        if (!want.has(key)) out.push(`I1 ${r.site} holds ${key}, which no published op wrote`);
    }
    return out;
  }

  /** Every op of the model, for a failure message. */
  describeModel(): string {
    return this.published
      .map((p) => `  ${p.origin}@${p.from}${p.rev ? ` rev ${p.rev}` : ""}: ${JSON.stringify(p.op)}`)
      .join("\n");
  }

  /** Count merge results of every replica into the stats. */
  tally(): Stats {
    for (const r of this.replicas) {
      this.stats.coalesced += r.coalesced();
      this.stats.batchesCut += r.batchesCut;
    }
    for (const r of this.replicas)
      for (const m of r.merges) this.stats[m.result as "applied" | "stale" | "duplicate"]++;
    for (const r of this.replicas)
      for (const s of r.stamps) if (s.held && s.version.ts === s.held.ts + 1) this.stats.heldPlusOne++;
    return this.stats;
  }
}

/** A replica's version tree, as its reconciler's index builds it from `_meta`. */
function treeOf(r: Replica): VersionTree {
  const t = new VersionTree(2);
  for (const [key, v] of r.meta.snapshot())
    t.set(key, { ts: v.ts, node_id: v.node_id, deleted: v.deleted, vh: v.vh });
  return t;
}
