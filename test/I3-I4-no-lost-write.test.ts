/**
 * I3 no lost write (DESIGN §4): every local write is published unless a newer local write of the
 * same key replaced it before it was stamped — bursts of distinct keys (text, binary, deletes of
 * present and absent keys) each appear in `SYNCD_OUT_<site>` exactly once with their contents;
 * rapid overwrites of one key publish the last write, none twice, in increasing ts.
 * I4 per-key monotonic: "read, then overwrite" wins at every site, also when the value read carries
 * a version 30 s ahead of this site's clock.
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { type JetStreamClient, type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Durables, type Op, Streams, kvStream, opValue, opsFilter } from "../services/mod.ts";
import { quiet, until, versions, withLinkedMesh } from "./helpers.ts";
import {
  type WriteRecord,
  checkOutcome,
  deleteWrite,
  publishHandMade,
  putWrite,
  readStream,
  uniqueValue,
} from "./workload.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A local write's message id without the bucket's incarnation (MsgIds.localWrite): `a.config.<rev>`. */
const withoutInc = (id: string) => id.replace(/@\d+(?=\.\d+$)/, "");

describe("I3 no lost write, I4 read-then-overwrite", () => {
  const { nc, kv } = withLinkedMesh({ sites: ["a", "b"], serviceArgs: ["--reconcile-interval", "0"] });
  let js: Record<string, JetStreamClient>;
  /** every local write of this file, for the final checks */
  const writes: WriteRecord[] = [];
  const handMade: Op[] = [];

  before(() => {
    js = { a: jetstream(nc.a!), b: jetstream(nc.b!) };
  });

  /** The ops of a site's OUT log by message id (the log keeps one op per key: see `captured`). */
  const outOf = async (site: string) => {
    const byId = new Map<string, Op[]>();
    for (const m of await readStream(nc[site]!, Streams.out(site))) {
      const id = withoutInc(m.msgId ?? "");
      const list = byId.get(id) ?? [];
      list.push(JSON.parse(new TextDecoder().decode(m.data)) as Op);
      byId.set(id, list);
    }
    return byId;
  };

  /**
   * Every op a site publishes from now on, by message id, seen by a core subscription on its op
   * subjects: the OUT log is compacted per key, so a put later overwritten by a delete of the same
   * key is no longer stored there, but it was published.
   */
  const captured = async (site: string) => {
    const byId = new Map<string, Op[]>();
    const sub = nc[site]!.subscribe(opsFilter(site), {
      callback: (_err, m) => {
        const id = withoutInc(m.headers?.get("Nats-Msg-Id") ?? "");
        const list = byId.get(id) ?? [];
        list.push(JSON.parse(new TextDecoder().decode(m.data)) as Op);
        byId.set(id, list);
      },
    });
    await nc[site]!.flush();
    return { byId, stop: () => sub.unsubscribe() };
  };

  it("I3 bursts of distinct keys (text, binary, deletes): each local write is published exactly once", async () => {
    const cap = await captured("a");
    const mine: WriteRecord[] = [];
    let n = 0;
    let prev: string[] = [];
    for (let burst = 0; burst < 5; burst++) {
      const keys = Array.from({ length: 150 }, (_, j) => `i3.${burst}.${j}`);
      const ops: Promise<WriteRecord>[] = [
        ...keys.map((k, j) => putWrite(kv.a!, "a", k, uniqueValue("a", n++, j % 5 === 0))),
        // deletes of keys that never existed: a tombstone is a write too
        ...Array.from({ length: 20 }, (_, j) => deleteWrite(js.a!, "a", `i3.absent.${burst}.${j}`)),
        // deletes of keys written (and published) in the burst before
        ...prev.slice(0, 20).map((k) => deleteWrite(js.a!, "a", k)),
      ];
      mine.push(...(await Promise.all(ops)));
      prev = keys;
      await quiet(nc);
    }
    writes.push(...mine);
    cap.stop();
    const out = cap.byId;
    const missing: string[] = [];
    const wrong: string[] = [];
    for (const w of mine) {
      const got = out.get(`a.config.${w.rev}`) ?? [];
      if (got.length !== 1) {
        missing.push(`${w.key} rev ${w.rev}: ${got.length} ops`);
        continue;
      }
      const op = got[0]!;
      const ok =
        op.key === w.key &&
        (op.op === "delete") === w.deleted &&
        Buffer.compare(Buffer.from(opValue(op)), Buffer.from(w.value)) === 0 &&
        (w.deleted || (w.value[0] === 0xff) === (op.encoding === "base64"));
      if (!ok) wrong.push(`${w.key} rev ${w.rev}: ${JSON.stringify(op)}`);
    }
    assert.deepEqual(missing, [], "local writes not published exactly once");
    assert.deepEqual(wrong, [], "published ops that do not carry their write");
    const ids = [...out.keys()].filter((id) => id !== "");
    assert.equal(ids.length, mine.length, "ops published with a message id (one per write)");
    assert.equal(mine.length, 5 * 170 + 4 * 20);
    const report = await checkOutcome({ ncs: nc, writes });
    assert.deepEqual(report.problems, [], report.problems.join("\n"));
  });

  it("I3 rapid concurrent overwrites of the same keys: the last write of each is published, none twice, ts increasing", async () => {
    const keys = Array.from({ length: 5 }, (_, i) => `i3.hot.${i}`);
    let n = 10_000;
    const mine = await Promise.all(
      keys.flatMap((k) =>
        Array.from({ length: 60 }, (_, j) =>
          j % 7 === 3 ? deleteWrite(js.a!, "a", k) : putWrite(kv.a!, "a", k, uniqueValue("a", n++, false)),
        ),
      ),
    );
    writes.push(...mine);
    await quiet(nc);
    const out = await outOf("a");
    const revs = new Set(mine.map((w) => `a.config.${w.rev}`));
    const published = [...out.entries()].filter(([id]) => revs.has(id));
    console.log(`# ${mine.length} overwrites of ${keys.length} keys → ${published.length} ops published`);
    // checkOutcome: the last write per key is published, each at most once, ts increase with rev,
    // and b holds the same winners
    const report = await checkOutcome({ ncs: nc, writes });
    assert.deepEqual(report.problems, [], report.problems.join("\n"));
    for (const k of keys) {
      const last = mine.filter((w) => w.key === k).sort((x, y) => y.rev - x.rev)[0]!;
      const eb = await kv.b!.get(k);
      if (last.deleted) assert.notEqual(eb?.operation, "PUT", `${k}: b should not hold a value`);
      else assert.equal(eb?.string(), new TextDecoder().decode(last.value), `${k} at b`);
    }
  });

  it("I4 read, then overwrite: the overwrite wins at both sites although the value read is stamped 30 s ahead", async () => {
    // Keep site a's watcher ticking without a backlog (one sequential writer), so it often holds a
    // block of clock ticks reserved before the ts ahead was observed: then only "stamp above the
    // version replaced" (meta.ts + 1) makes the overwrite win.
    let stop = false;
    let bgN = 50_000;
    const bg = Array.from({ length: 1 }, async () => {
      while (!stop) {
        const i = bgN++;
        writes.push(await putWrite(kv.a!, "a", `i4.bg.${i % 20}`, uniqueValue("a", i, false)));
      }
    });
    const ROUNDS = 20;
    const results: { key: string; i: number; injected: number; ts: number }[] = [];
    try {
      for (let i = 0; i < ROUNDS; i++) {
        const k = `i4.rto.${i}`;
        writes.push(await putWrite(kv.b!, "b", k, uniqueValue("b", 1000 + i, false)));
        await until(async () => (await kv.a!.get(k))?.string() === `b:${1000 + i}`, { message: `${k} b→a` });
        // b's clock is 30 s ahead: a hand-made op at b with such a ts (node id above site-a, so an
        // equal ts would not do either)
        const injected = (Date.now() + 30_000) * 1000;
        const op: Op = {
          op: "put",
          bucket: "config",
          key: k,
          value: `ahead-${i}`,
          ts: injected,
          node_id: "zz-ahead",
        };
        handMade.push(op);
        // read at a (the moment the value lands), then overwrite at once
        const w = await kv.a!.watch({ key: k });
        await publishHandMade(nc.b!, op);
        for await (const e of w) {
          if (e.operation === "PUT" && e.string() === `ahead-${i}`) {
            writes.push(await putWrite(kv.a!, "a", k, uniqueValue("a", 2000 + i, false)));
            break;
          }
        }
        w.stop();
        results.push({ key: k, i, injected, ts: 0 });
      }
    } finally {
      stop = true;
      await Promise.all(bg);
    }
    await quiet(nc);
    for (const r of results) {
      for (const s of ["a", "b"]) {
        assert.equal(
          (await kv[s]!.get(r.key))?.string(),
          `a:${2000 + r.i}`,
          `${r.key} at ${s}: a's overwrite must win`,
        );
        const v = (await versions(nc[s]!)).get(r.key);
        assert.equal(v?.node_id, "site-a", `${r.key} at ${s}: version ${JSON.stringify(v)}`);
        assert.ok(v.ts > r.injected, `${r.key} at ${s}: ts ${v.ts} not above the value read (${r.injected})`);
        r.ts = v.ts;
      }
    }
    const byMeta = results.filter((r) => r.ts === r.injected + 1).length;
    console.log(
      `# overwrite ts - ts read: ${results.map((r) => r.ts - r.injected).join(", ")}; ${byMeta}/${ROUNDS} stamped exactly meta.ts + 1 (a block of ticks reserved before the ts ahead was observed)`,
    );
    const report = await checkOutcome({ ncs: nc, writes, handMade });
    assert.deepEqual(report.problems, [], report.problems.join("\n"));
  });
});

/**
 * Every site has a stream `KV_<bucket>` with the watcher's durable `syncd-watcher-<bucket>`, so the
 * acks of every site's watcher use the same subjects (`$JS.ACK.KV_config.syncd-watcher-config.…`),
 * and the leaf connections carry them to every other site. A site whose watcher still holds a local
 * write (waiting for the clock, or killed while stamping it) must not see that write acknowledged by
 * another site's watcher acking the same stream sequence.
 */
describe("I3 a local write the watcher still holds is not lost to another site's ack", () => {
  const { mesh, nc } = withLinkedMesh({ sites: ["a", "b"], serviceArgs: ["--reconcile-interval", "0"] });

  it("I3 a write held by site a's watcher (clock down) is published once the clock is back, although site b's watcher acked the same stream sequence meanwhile", async () => {
    const kvA = await mesh.kv("a");
    const kvB = await mesh.kv("b");
    const jsmA = await jetstreamManager(nc.a!);
    const jsmB = await jetstreamManager(nc.b!);
    const watcherInfo = (m: JetStreamManager, site: string) =>
      m.consumers.info(kvStream("config"), Durables.watcher(site, "config"));
    // a's watcher cannot stamp without its clock; a's merger is stopped so that b's writes do not
    // move a's stream sequences
    const down = mesh.services("a").filter((i) => i.kind === "clock" || i.kind === "merger");
    await Promise.all(down.map((i) => i.kill9()));
    await sleep(100); // any block of clock ticks the watcher holds is stale after 20 ms
    const w = await putWrite(kvA, "a", "held.by.a", uniqueValue("a", 1, false));
    await until(async () => (await watcherInfo(jsmA, "a")).num_ack_pending === 1, {
      message: "a's watcher did not take the write",
    });
    // b writes until its bucket stream reaches the same sequence, and its watcher acks it
    const last = (await jsmB.streams.info(kvStream("config"))).state.last_seq;
    for (let i = last; i < w.rev; i++) await kvB.put(`b.filler.${i}`, "x");
    await until(async () => (await watcherInfo(jsmB, "b")).ack_floor.stream_seq >= w.rev, {
      message: "b's watcher did not ack",
    });
    await sleep(300);
    const heldAtA = await watcherInfo(jsmA, "a");
    for (const i of down) i.spawn();
    await mesh.waitServices("a");
    await quiet(nc, { timeout: 30_000 });
    const ids = new Set((await readStream(nc.a!, Streams.out("a"))).map((m) => withoutInc(m.msgId ?? "")));
    assert.ok(
      ids.has(`a.config.${w.rev}`) && (await kvB.get(w.key))?.string() === "a:1",
      `local write ${w.key} (rev ${w.rev} at a) was never published. While a's watcher held it, b's watcher acked its own rev ${w.rev}; a's consumer then showed ack pending ${heldAtA.num_ack_pending} (1 expected), ack floor ${heldAtA.ack_floor.stream_seq}: the ack of site b (subject $JS.ACK.${kvStream("config")}.${Durables.watcher("a", "config")}.…, the same at every site) crossed the leaf connection and acknowledged site a's message`,
    );
  });
});
