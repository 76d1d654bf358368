/**
 * I3 across the migration from the full mesh (SYNCD_IN_<site> sourcing every peer's SYNCD_OUT_<peer>,
 * subject rep.kv.ops.<site>) to hub-and-spoke, done by the services on start, one site at a time:
 * no write is lost — ops still waiting in the old inbound stream, writes whose ops expired from the
 * old logs (only `_meta` and the bucket know them), writes made by an old site while its peer already
 * runs the new services, tombstones — with anti-entropy off. Afterwards the full-mesh sources are gone.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import {
  Durables,
  OPS_INGRESS,
  Streams,
  journalSubject,
  kvFilter,
  legacyOpsSubject,
  makeOp,
  metaBucket,
  valueHash,
} from "../services/mod.ts";
import { type Mesh, startMesh } from "./harness/mesh.ts";
import { contents, until, versions } from "./helpers.ts";

const SITES = ["a", "b"];
const enc = new TextEncoder();

/** A site's state as the previous version's services leave it: streams, buckets, watcher position. */
async function oldSite(nc: NatsConnection, site: string, peers: string[]): Promise<JetStreamManager> {
  const jsm = await jetstreamManager(nc);
  const kvm = new Kvm(nc);
  await kvm.create("config", { history: 1 });
  await kvm.create(metaBucket("config"), { history: 1 });
  await jsm.streams.add({ name: Streams.legacyOut(site), subjects: [legacyOpsSubject(site)] });
  await jsm.streams.add({
    name: Streams.ingress(site),
    subjects: [OPS_INGRESS, journalSubject(site)],
    sources: peers.map((p) => ({
      name: Streams.legacyOut(p),
      filter_subject: legacyOpsSubject(p),
      external: { api: `$JS.${p}.API`, deliver: "" },
    })),
  });
  return jsm;
}

/** The old watcher's durable, at the end of the bucket: it had handled every write so far. */
async function oldWatcherPosition(nc: NatsConnection, site: string): Promise<void> {
  await (await jetstreamManager(nc)).consumers.add("KV_config", {
    durable_name: Durables.watcher(site, "config"),
    ack_policy: "explicit" as never,
    deliver_policy: "new" as never,
    filter_subject: kvFilter("config"),
  });
}

/** A local write as an old site makes it: bucket, `_meta`, and (unless expired) its op on the old subject. */
async function oldWrite(
  nc: NatsConnection,
  site: string,
  key: string,
  value: string | null,
  ts: number,
  opts: { published?: boolean } = {},
): Promise<void> {
  const kvm = new Kvm(nc);
  const kv = await kvm.open("config");
  if (value === null) await kv.delete(key);
  else await kv.put(key, value);
  const rev = (await kv.get(key))!.revision;
  const deleted = value === null;
  const version = {
    ts,
    node_id: `site-${site}`,
    deleted,
    rev,
    ...(deleted ? {} : { vh: valueHash(enc.encode(value)) }),
  };
  await (await kvm.open(metaBucket("config"))).put(key, JSON.stringify(version));
  if (opts.published === false) return;
  const op = makeOp({
    bucket: "config",
    key,
    ts,
    nodeId: `site-${site}`,
    deleted,
    ...(deleted ? {} : { value: enc.encode(value) }),
  });
  await jetstream(nc).publish(legacyOpsSubject(site), JSON.stringify(op), { msgID: `${site}.config.${rev}` });
}

describe("I3 migration from the full mesh, by the services on start", () => {
  let mesh: Mesh;
  const nc: Record<string, NatsConnection> = {};

  before(async () => {
    mesh = await startMesh({
      sites: SITES,
      services: false,
      serviceArgs: ["--reconcile-interval", "0"],
      // the full mesh sources every peer's stream across domains: the hub must not isolate leaf interest
      isolate: false,
    });
    for (const s of SITES) nc[s] = await mesh.connect(s);
    for (const s of SITES)
      await oldSite(
        nc[s]!,
        s,
        SITES.filter((p) => p !== s),
      );
  });
  after(async () => {
    await mesh?.stop();
  });

  it("I3 no write is lost while the sites move to the hub one at a time", async () => {
    let ts = Date.now() * 1000;
    // history of the full mesh: a's ops wait unconsumed in b's old inbound stream (b's merger was
    // down), some ops expired from the old logs long ago, one tombstone
    for (let i = 0; i < 5; i++) await oldWrite(nc.a!, "a", `m.a.${i}`, `a${i}`, ++ts);
    await oldWrite(nc.a!, "a", "m.a.0", null, ++ts);
    await oldWrite(nc.a!, "a", "m.a.expired", "only-in-meta", ++ts, { published: false });
    for (let i = 0; i < 5; i++) await oldWrite(nc.b!, "b", `m.b.${i}`, `b${i}`, ++ts);
    await oldWrite(nc.b!, "b", "m.b.expired", "only-in-meta-b", ++ts, { published: false });
    for (const s of SITES) await oldWatcherPosition(nc[s]!, s);

    // a moves first; b still runs the old version and writes
    await mesh.startServices("a");
    await oldWrite(nc.b!, "b", "late.b", "from-old-b", ++ts);
    // an old watcher instance still running at a writes on the old subject
    await oldWrite(nc.a!, "a", "late.a", "from-old-a", ++ts);
    await until(async () => (await contents(await mesh.kv("a"))).get("late.b") === "from-old-b", {
      message: "a did not get b's old-style write through the full-mesh source",
    });

    // then b moves
    await mesh.startServices("b");
    const want = new Map<string, string>([
      ...[1, 2, 3, 4].map((i): [string, string] => [`m.a.${i}`, `a${i}`]),
      ...[0, 1, 2, 3, 4].map((i): [string, string] => [`m.b.${i}`, `b${i}`]),
      ["m.a.expired", "only-in-meta"],
      ["m.b.expired", "only-in-meta-b"],
      ["late.a", "from-old-a"],
      ["late.b", "from-old-b"],
    ]);
    const sorted = (m: Map<string, string>) => JSON.stringify([...m].sort());
    for (const s of SITES)
      await until(async () => sorted(await contents(await mesh.kv(s))) === sorted(want), {
        timeout: 60_000,
        message: `site ${s} does not hold every write`,
      });
    assert.equal((await versions(nc.b!)).get("m.a.0")?.deleted, true, "tombstone m.a.0 missing at b");

    // the full-mesh sources are removed once both sites feed the hub
    for (const s of SITES)
      await until(
        async () =>
          ((await (await jetstreamManager(nc[s]!)).streams.info(Streams.ingress(s))).config.sources ?? [])
            .length === 0,
        { timeout: 60_000, message: `site ${s} still sources the full mesh` },
      );
    // and replication goes on through the hub
    await (await mesh.kv("a")).put("after", "hub");
    await until(async () => (await (await mesh.kv("b")).get("after"))?.string() === "hub");
  });
});
