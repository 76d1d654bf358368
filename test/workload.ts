/**
 * A bounded write workload for the integration tests, and the checker of its outcome.
 *
 *   const w = await runWorkload({ ncs, keys: keySet("w", 40), writersPerSite: 3, durationMs: 4000, seed });
 *   await quiet(ncs, { timeout: 60_000 });
 *   const report = await checkOutcome({ ncs, writes: w.writes });
 *   assert.deepEqual(report.problems, []);
 *
 * Writers on every site put and delete keys of an overlapping key set through plain NATS clients
 * (KV put; a delete is the same `KV-Operation: DEL` publish `kv.delete` makes, so its revision is
 * known). Every value is unique (`<site>:<n>`, some as binary bytes) and every write is recorded
 * with the bucket revision it got. The checker then reads every op every site published (its
 * `SYNCD_OUT_<site>` stream) and checks, against those ops only:
 * - I1: every site's bucket holds, key by key, the value of the greatest version among the ops
 *   (a tombstone → no key), and every site's `_meta` holds exactly that version;
 * - I2: every published op is one recorded local write of that site (Nats-Msg-Id
 *   `<site>.<bucket>.<rev>`, same key, same contents, the site's node id) — the merger's writes
 *   are never published;
 * - I3: no local write is published twice (by message id and by (key, ts)), and the last local
 *   write of each key at each site is published (see `allowBeatenUnpublished` for kill -9);
 * - I4: the published ops of one key at one site have increasing ts in revision order.
 */
import { type JetStreamClient, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import { type NatsConnection, headers } from "@nats-io/nats-core";
import {
  CLIENT_REPLY_SITE,
  type Conflict,
  OPS_INGRESS,
  type Op,
  Streams,
  type Version,
  compare,
  compareBytes,
  compareVersions,
  kvSubject,
  metaBucket,
  opValue,
  opVersioned,
  parseOp,
  relayReplyPrefix,
  relaySubject,
} from "../services/mod.ts";
import { versions } from "./helpers.ts";
import { prng } from "./sim/sched.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A seed from the environment variable `name` (printed so a run can be replayed), else a fresh one. */
export function seedFromEnv(name: string): number {
  const raw = process.env[name];
  const seed = raw !== undefined && raw !== "" ? Number(raw) >>> 0 : (Date.now() ^ (process.pid << 8)) >>> 0;
  console.log(`# ${name}=${seed}`);
  return seed;
}

/** How long a workload runs: `SOAK_MS` when set, else `def` ms. */
export function soakMs(def: number): number {
  const v = Number(process.env.SOAK_MS);
  return Number.isFinite(v) && v > 0 ? v : def;
}

/** `n` keys `<prefix>.<i>`. */
export function keySet(prefix: string, n: number): string[] {
  return Array.from({ length: n }, (_, i) => `${prefix}.${i}`);
}

/** One local write, as a client made it. */
export type WriteRecord = {
  site: string;
  key: string;
  /** true for a delete (value is then empty) */
  deleted: boolean;
  value: Uint8Array;
  /** the bucket revision (stream sequence) the write got */
  rev: number;
  writer: number;
  /** Date.now() when the write was issued */
  at: number;
};

/** Put `value` at `key`: the revision. */
export async function putWrite(kv: KV, site: string, key: string, value: Uint8Array): Promise<WriteRecord> {
  const at = Date.now();
  const rev = await kv.put(key, value);
  return { site, key, deleted: false, value, rev, writer: -1, at };
}

/** Delete `key` exactly as `kv.delete` does (a `KV-Operation: DEL` marker), returning its revision. */
export async function deleteWrite(
  js: JetStreamClient,
  site: string,
  key: string,
  bucket = "config",
): Promise<WriteRecord> {
  const h = headers();
  h.set("KV-Operation", "DEL");
  const at = Date.now();
  const ack = await js.publish(kvSubject(bucket, key), new Uint8Array(), { headers: h });
  return { site, key, deleted: true, value: new Uint8Array(), rev: ack.seq, writer: -1, at };
}

/** The unique value of write n at a site, as text or (binary) as bytes that are not valid UTF-8. */
export function uniqueValue(site: string, n: number, binary: boolean): Uint8Array {
  const text = enc.encode(`${site}:${n}`);
  if (!binary) return text;
  const out = new Uint8Array(text.length + 2);
  out[0] = 0xff;
  out[1] = 0x00;
  out.set(text, 2);
  return out;
}

export type WorkloadOptions = {
  /** a connection per site (the writers' clients) */
  ncs: Record<string, NatsConnection>;
  bucket?: string;
  /** the key set every writer draws from (overlapping between sites) */
  keys: string[];
  writersPerSite: number;
  /** stop starting writes after this many ms */
  durationMs: number;
  /** and after this many writes per site */
  maxWritesPerSite?: number;
  /** keep writing past `durationMs` until this is true (e.g. the chaos made its kills): no time bet */
  until?: () => boolean;
  /** and until each site started this many writes (a slow machine writes longer, not less) */
  minWritesPerSite?: number;
  /** share of deletes (default 0.15) */
  deleteRatio?: number;
  /** share of binary (non-UTF-8) values among puts (default 0.1) */
  binaryRatio?: number;
  /** pause between two writes of one writer, ms (default 0) */
  pauseMs?: number;
  seed: number;
  /** a write failed (default: the workload fails) */
  onError?: (err: unknown, site: string, key: string) => void;
};

export type WorkloadResult = { writes: WriteRecord[]; failed: number; elapsedMs: number };

/** Run concurrent writers on every site until the time or count runs out; every write recorded. */
export async function runWorkload(o: WorkloadOptions): Promise<WorkloadResult> {
  const bucket = o.bucket ?? "config";
  const random = prng(o.seed);
  const writes: WriteRecord[] = [];
  let failed = 0;
  const t0 = Date.now();
  const deadline = t0 + o.durationMs;
  const max = o.maxWritesPerSite ?? Number.POSITIVE_INFINITY;
  const runs: Promise<void>[] = [];
  for (const [site, nc] of Object.entries(o.ncs)) {
    const kv = await new Kvm(nc).open(bucket);
    const js = jetstream(nc);
    let n = 0;
    for (let w = 0; w < o.writersPerSite; w++) {
      runs.push(
        (async () => {
          const more = () =>
            Date.now() < deadline || n < (o.minWritesPerSite ?? 0) || (o.until !== undefined && !o.until());
          while (more() && n < max) {
            const i = n++;
            const key = o.keys[Math.floor(random() * o.keys.length)]!;
            const del = random() < (o.deleteRatio ?? 0.15);
            const binary = random() < (o.binaryRatio ?? 0.1);
            try {
              const r = del
                ? await deleteWrite(js, site, key, bucket)
                : await putWrite(kv, site, key, uniqueValue(site, i, binary));
              writes.push({ ...r, writer: w });
            } catch (err) {
              failed++;
              if (!o.onError) throw new Error(`write ${site}:${i} of ${key} failed: ${String(err)}`);
              o.onError(err, site, key);
            }
            if (o.pauseMs) await sleep(o.pauseMs);
          }
        })(),
      );
    }
  }
  await Promise.all(runs);
  return { writes, failed, elapsedMs: Date.now() - t0 };
}

/** One message of a stream. */
export type StoredMsg = { seq: number; subject: string; data: Uint8Array; msgId: string | undefined };

/** Every message of a stream, in order (an ordered consumer). */
export async function readStream(nc: NatsConnection, stream: string): Promise<StoredMsg[]> {
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(stream);
  if (info.state.messages === 0) return [];
  const last = info.state.last_seq;
  const c = await jetstream(nc).consumers.get(stream);
  const out: StoredMsg[] = [];
  const iter = await c.consume();
  try {
    for await (const m of iter) {
      // ids as `<site>.<bucket>.<rev>`: the bucket's incarnation (`@<inc>`, MsgIds.localWrite) left out
      const msgId = m.headers?.get("Nats-Msg-Id")?.replace(/@\d+\./, ".");
      out.push({ seq: m.seq, subject: m.subject, data: m.data, msgId });
      if (m.seq >= last) break;
    }
  } finally {
    await iter.close().catch(() => {});
  }
  return out;
}

/** One op a site published, with where it is stored. */
export type PublishedOp = { site: string; seq: number; msgId: string | undefined; op: Op };

/** Every op in `SYNCD_OUT_<site>` of every site. */
export async function publishedOps(ncs: Record<string, NatsConnection>): Promise<PublishedOp[]> {
  const out: PublishedOp[] = [];
  for (const [site, nc] of Object.entries(ncs)) {
    for (const m of await readStream(nc, Streams.out(site))) {
      out.push({ site, seq: m.seq, msgId: m.msgId, op: parseOp(m.data) });
    }
  }
  return out;
}

/** The LWW winner per key among ops (the greatest by the register's total order). */
export function winners(ops: Op[], bucket = "config"): Map<string, Op> {
  const w = new Map<string, Op>();
  for (const op of ops) {
    if (op.bucket !== bucket) continue;
    const cur = w.get(op.key);
    if (!cur || compare(opVersioned(op), opVersioned(cur)) > 0) w.set(op.key, op);
  }
  return w;
}

const same = (a: Uint8Array, b: Uint8Array) => compareBytes(a, b) === 0;
const show = (v: Uint8Array): string => {
  try {
    return JSON.stringify(new TextDecoder("utf-8", { fatal: true }).decode(v));
  } catch {
    return `0x${Buffer.from(v).toString("hex")}`;
  }
};
const showOp = (op: Op) =>
  `${op.op}${op.op === "put" ? ` ${show(opValue(op))}` : ""} ts=${op.ts} node=${op.node_id}`;

export type CheckOptions = {
  ncs: Record<string, NatsConnection>;
  bucket?: string;
  /** every local write the test made (at any site, any workload) */
  writes: WriteRecord[];
  /** node id of a site (default `site-<site>`) */
  nodeId?: (site: string) => string;
  /** hand-made ops published on rep.kv.ops: allowed in OUT (forwarded) and part of the winners */
  handMade?: Op[];
  /**
   * Under kill -9: accept an unpublished last local write when it was stamped and then replaced by
   * a newer version from another node before the watcher (killed between its commit to `_meta` and
   * the publish) got the entry again — the watcher then rightly sees a newer version. Decided from
   * what the services recorded, not from clocks: the site's merger kept an `overwritten` conflict
   * record whose loser is exactly this write (this site's node id, its unique bytes) — which the
   * merger can only report when `_meta` held the write's own stamp (`bucketHolds`) — and whose
   * winner is greater. A delete replaced by another node's delete leaves no record (nothing was
   * lost): accepted when the site's final `_meta` is another node's merged tombstone covering the
   * write's revision. A merger that overwrote an unstamped write has no such record: reported lost.
   */
  allowBeatenUnpublished?: boolean;
};

export type CheckReport = {
  problems: string[];
  /** ops per site in SYNCD_OUT */
  opsPerSite: Record<string, number>;
  /** last local writes (per site and key) that no op carries (accepted or not) */
  unpublishedLast: WriteRecord[];
  keys: number;
  tombstones: number;
};

/** Check the outcome of a workload at quiescence; see the file comment. Never throws on a finding. */
export async function checkOutcome(o: CheckOptions): Promise<CheckReport> {
  const bucket = o.bucket ?? "config";
  const nodeId = o.nodeId ?? ((s: string) => `site-${s}`);
  const problems: string[] = [];
  const more = (what: string, list: string[], max = 15) => {
    if (list.length === 0) return;
    problems.push(
      `${what} (${list.length}):\n    ${list.slice(0, max).join("\n    ")}${list.length > max ? "\n    …" : ""}`,
    );
  };
  const ops = await publishedOps(o.ncs);
  const opsPerSite: Record<string, number> = {};
  for (const s of Object.keys(o.ncs)) opsPerSite[s] = ops.filter((p) => p.site === s).length;

  // I2/I3: every op is one recorded local write (or a forwarded hand-made op), each at most once.
  const bySiteRev = new Map<string, WriteRecord>();
  for (const w of o.writes) bySiteRev.set(`${w.site}/${w.rev}`, w);
  const handMade = o.handMade ?? [];
  const sameOp = (a: Op, b: Op) => compare(opVersioned(a), opVersioned(b)) === 0 && a.key === b.key;
  const foreign: string[] = [];
  const mismatched: string[] = [];
  const dupIds: string[] = [];
  const dupTs: string[] = [];
  const seenIds = new Map<string, number>();
  const seenTs = new Map<string, number>();
  const publishedRevs = new Map<string, PublishedOp>();
  for (const p of ops) {
    const where = `${Streams.out(p.site)}#${p.seq} ${p.op.key}: ${showOp(p.op)} id=${p.msgId}`;
    const idKey = `${p.site}/${p.msgId}`;
    if (p.msgId !== undefined) {
      seenIds.set(idKey, (seenIds.get(idKey) ?? 0) + 1);
      if (seenIds.get(idKey) === 2) dupIds.push(where);
    }
    const tsKey = `${p.site}/${p.op.key}/${p.op.ts}/${p.op.node_id}`;
    seenTs.set(tsKey, (seenTs.get(tsKey) ?? 0) + 1);
    if (seenTs.get(tsKey) === 2) dupTs.push(where);
    const m = new RegExp(`^${p.site}\\.${bucket}\\.(\\d+)$`).exec(p.msgId ?? "");
    if (!m) {
      if (handMade.some((h) => sameOp(h, p.op))) continue;
      // a repair of the compacted log (services/lib/oplog.ts): a site's own write published again,
      // without its message id, after an older op of the key landed last
      const own = o.writes.find(
        (w) =>
          w.site === p.site &&
          w.key === p.op.key &&
          p.op.node_id === nodeId(p.site) &&
          (p.op.op === "delete") === w.deleted &&
          (w.deleted || same(opValue(p.op), w.value)),
      );
      if (own) publishedRevs.set(`${p.site}/${own.rev}`, p);
      else foreign.push(where);
      continue;
    }
    const w = bySiteRev.get(`${p.site}/${m[1]}`);
    if (!w) {
      foreign.push(`${where} (no local write at rev ${m[1]})`);
      continue;
    }
    publishedRevs.set(`${p.site}/${w.rev}`, p);
    const okContents =
      p.op.key === w.key &&
      p.op.bucket === bucket &&
      (p.op.op === "delete") === w.deleted &&
      (w.deleted || same(opValue(p.op), w.value)) &&
      p.op.node_id === nodeId(p.site);
    if (!okContents)
      mismatched.push(`${where} ≠ local write ${w.key} ${w.deleted ? "delete" : show(w.value)} rev ${w.rev}`);
  }
  more("I2: published ops that are no recorded local write of their site (an echo?)", foreign);
  more("published ops whose contents differ from the local write of their revision", mismatched);
  more("I3: a message id published twice", dupIds);
  more("I3: a (key, ts) published twice by one site", dupTs);

  // I3: the last local write of each key at each site is published.
  const lastLocal = new Map<string, WriteRecord>();
  for (const w of o.writes) {
    const k = `${w.site}/${w.key}`;
    const cur = lastLocal.get(k);
    if (!cur || w.rev > cur.rev) lastLocal.set(k, w);
  }
  const win = winners([...ops.map((p) => p.op), ...handMade], bucket);
  const unpublishedLast = [...lastLocal.values()].filter((w) => !publishedRevs.has(`${w.site}/${w.rev}`));
  const lost: string[] = [];
  const records = o.allowBeatenUnpublished ? await conflictRecords(o.ncs) : [];
  const metas = new Map<string, Map<string, Version>>();
  for (const w of unpublishedLast) {
    // the site's log is compacted per key: a greater op of the key (a hand-made op the site
    // forwarded) replaced the write's op there, which ordered publishing allows only when greater
    if (ops.some((p) => p.site === w.site && p.op.bucket === bucket && p.op.key === w.key)) continue;
    const op = win.get(w.key);
    let beaten = false;
    if (o.allowBeatenUnpublished) {
      beaten = records.some(
        (r) =>
          r.site === w.site &&
          r.bucket === bucket &&
          r.key === w.key &&
          r.kind === "overwritten" &&
          r.loser.node_id === nodeId(w.site) &&
          r.loser.deleted === w.deleted &&
          (w.deleted || same(sideValue(r.loser), w.value)) &&
          compareVersions(r.winner, r.loser) > 0,
      );
      if (!beaten && w.deleted && op?.op === "delete" && op.node_id !== nodeId(w.site)) {
        if (!metas.has(w.site)) metas.set(w.site, await versions(o.ncs[w.site]!, bucket));
        const m = metas.get(w.site)!.get(w.key);
        beaten = m?.deleted === true && m.merged === true && m.node_id !== nodeId(w.site) && m.rev >= w.rev;
      }
    }
    if (!beaten)
      lost.push(
        `${w.site} ${w.key} rev ${w.rev} ${w.deleted ? "delete" : show(w.value)} (issued at ${w.at}; winner ${op ? showOp(op) : "none"})`,
      );
  }
  more("I3: the last local write of a key at a site was never published", lost);

  // I4: one site's ops of one key: ts increases with the revision.
  const perSiteKey = new Map<string, { rev: number; op: Op }[]>();
  for (const [k, p] of publishedRevs) {
    const rev = Number(k.slice(k.indexOf("/") + 1));
    const sk = `${p.site}/${p.op.key}`;
    const list = perSiteKey.get(sk) ?? [];
    list.push({ rev, op: p.op });
    perSiteKey.set(sk, list);
  }
  const nonMonotonic: string[] = [];
  for (const [sk, list] of perSiteKey) {
    list.sort((a, b) => a.rev - b.rev);
    for (let i = 1; i < list.length; i++) {
      if (list[i]!.op.ts <= list[i - 1]!.op.ts)
        nonMonotonic.push(
          `${sk}: rev ${list[i]!.rev} ts ${list[i]!.op.ts} <= rev ${list[i - 1]!.rev} ts ${list[i - 1]!.op.ts}`,
        );
    }
  }
  more("I4: a later local write of a key stamped at or below an earlier one of the same site", nonMonotonic);

  // I1: every site holds the winners, value and version.
  const diverged: string[] = [];
  const kvm = (nc: NatsConnection) => new Kvm(nc);
  for (const [site, nc] of Object.entries(o.ncs)) {
    const kv = await kvm(nc).open(bucket);
    const meta = await versions(nc, bucket);
    const present = new Set<string>();
    for await (const k of await kv.keys()) present.add(k);
    for (const k of present) if (!win.has(k)) diverged.push(`${site} ${k}: in the bucket but in no op`);
    for (const k of meta.keys())
      if (!win.has(k)) diverged.push(`${site} ${k}: in ${metaBucket(bucket)} but in no op`);
    for (const [k, op] of win) {
      const e = await kv.get(k);
      const has = e !== null && e.operation === "PUT";
      if (op.op === "delete") {
        if (has) diverged.push(`${site} ${k}: holds ${show(e.value)}, winner is ${showOp(op)}`);
      } else if (!has) {
        diverged.push(`${site} ${k}: no value (${e?.operation ?? "no entry"}), winner is ${showOp(op)}`);
      } else if (!same(e.value, opValue(op))) {
        diverged.push(`${site} ${k}: holds ${show(e.value)}, winner is ${showOp(op)}`);
      }
      const v = meta.get(k);
      if (!v || v.ts !== op.ts || v.node_id !== op.node_id || v.deleted !== (op.op === "delete"))
        diverged.push(
          `${site} ${k}: ${metaBucket(bucket)} ${v ? `ts=${v.ts} node=${v.node_id} deleted=${v.deleted}` : "missing"}, winner is ${showOp(op)}`,
        );
    }
  }
  more("I1: a site does not hold the winner of the published ops", diverged, 25);

  return {
    problems,
    opsPerSite,
    unpublishedLast,
    keys: [...win.values()].filter((op) => op.op === "put").length,
    tombstones: [...win.values()].filter((op) => op.op === "delete").length,
  };
}

/** Every conflict record of every site (`SYNCD_CONFLICTS_<site>`), with the site that kept it. */
async function conflictRecords(
  ncs: Record<string, NatsConnection>,
): Promise<(Conflict & { site: string })[]> {
  const out: (Conflict & { site: string })[] = [];
  for (const [site, nc] of Object.entries(ncs)) {
    for (const m of await readStream(nc, Streams.conflicts(site)))
      out.push({ ...(JSON.parse(dec.decode(m.data)) as Conflict), site });
  }
  return out;
}

/** The value bytes of one side of a conflict record. */
function sideValue(side: Conflict["loser"]): Uint8Array {
  if (side.value === undefined) return new Uint8Array();
  return side.encoding === "base64"
    ? new Uint8Array(Buffer.from(side.value, "base64"))
    : enc.encode(side.value);
}

/** A hand-made op, published at a site on `rep.kv.ops` (as `nats pub rep.kv.ops` would). */
export async function publishHandMade(nc: NatsConnection, op: Op): Promise<void> {
  nc.publish(OPS_INGRESS, JSON.stringify(op));
  await nc.flush();
}

/**
 * Micro STATS of every instance of a service (all sites): the replies within `ms`, asked directly
 * and through the hub relay (a hub that isolates leaf interest), one per instance.
 */
export async function collectStats(nc: NatsConnection, service: string, ms = 1000): Promise<MicroStats[]> {
  const out = new Map<string, MicroStats>();
  const inbox = `${relayReplyPrefix(CLIENT_REPLY_SITE, Math.random().toString(36).slice(2))}.stats`;
  const sub = nc.subscribe(inbox, {
    callback: (err, m) => {
      if (err || m.data.length === 0) return;
      const s = JSON.parse(dec.decode(m.data)) as MicroStats;
      if (!out.has(s.id)) out.set(s.id, s);
    },
  });
  await nc.flush();
  nc.publish(`$SRV.STATS.${service}`, "", { reply: inbox });
  nc.publish(relaySubject(`$SRV.STATS.${service}`), "", { reply: inbox });
  await nc.flush();
  await sleep(ms);
  sub.unsubscribe();
  return [...out.values()];
}

/** The parts of a micro STATS reply the tests read. */
export type MicroStats = {
  name: string;
  id: string;
  metadata?: Record<string, string>;
  endpoints: { name: string; subject: string; num_requests: number; data?: unknown }[];
};

/** What a site knows about a key, for failure messages: its `_meta` version and the bucket history. */
export async function explainKey(nc: NatsConnection, key: string, bucket = "config"): Promise<string> {
  const meta = await new Kvm(nc).open(metaBucket(bucket));
  const m = await meta.get(key);
  const kv = await new Kvm(nc).open(bucket);
  const hist: string[] = [];
  for await (const e of await kv.history({ key })) {
    hist.push(`rev ${e.revision} ${e.operation}${e.operation === "PUT" ? ` ${show(e.value)}` : ""}`);
  }
  return `${key}: ${metaBucket(bucket)} ${m?.operation === "PUT" ? m.string() : "none"}; bucket: ${hist.join(", ") || "no entry"}`;
}
