/**
 * I1 with what a current nats-server changes (2.11+): an entry that expires — per-message TTL, or the
 * bucket's max age — leaves a delete marker the server writes itself (`Nats-Marker-Reason`), which
 * the watcher replicates as what it is, a delete. A bucket whose entries expire without markers
 * (any server) cannot be replicated — the expiry would vanish and anti-entropy would bring the key
 * back — and the watcher refuses it loudly at start.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import { REPO_ROOT, findNatsServer } from "../scripts/lib/topology.ts";
import { Headers, expiryProblem, kvStream, kvSubject } from "../services/mod.ts";
import { until, versions, withMesh } from "./helpers.ts";

const SERVER_VERSION = execFileSync(findNatsServer(), ["--version"], { encoding: "utf8" })
  .replace(/^.*v/, "")
  .trim();
const [MAJOR = 0, MINOR = 0] = SERVER_VERSION.split(".").map(Number);
const HAS_MARKERS = MAJOR > 2 || (MAJOR === 2 && MINOR >= 11);

describe("I1 expiry: buckets whose entries expire", () => {
  const { mesh, nc } = withMesh({ sites: ["a", "b"], services: false, buckets: ["config", "ttl"] });
  let ncA: NatsConnection;
  let ncB: NatsConnection;

  before(async () => {
    [ncA, ncB] = [nc.a!, nc.b!];
    if (HAS_MARKERS)
      for (const nc of [ncA, ncB]) await new Kvm(nc).create("ttl", { history: 1, markerTTL: 60_000 });
    await mesh.startServices("a");
    await mesh.startServices("b");
  });

  it("I1 expiryProblem: expiry without delete markers is a problem, with markers or without expiry it is not", () => {
    const s = 1e9;
    assert.equal(expiryProblem("c", {}), undefined);
    assert.equal(expiryProblem("c", { max_age: 0, allow_msg_ttl: false }), undefined);
    assert.match(
      expiryProblem("c", { max_age: 3600 * s }) ?? "",
      /bucket c .*max_age 3600 s.*without delete markers/,
    );
    assert.match(expiryProblem("c", { allow_msg_ttl: true }) ?? "", /per-message TTLs/);
    assert.equal(
      expiryProblem("c", { max_age: 3600 * s, allow_msg_ttl: true, subject_delete_marker_ttl: 60 * s }),
      undefined,
    );
  });

  it(
    `I1 an entry's per-message TTL runs out at site a: the server's marker replicates as a delete to b (nats-server ${SERVER_VERSION})`,
    { skip: HAS_MARKERS ? false : `nats-server ${SERVER_VERSION} has no delete markers (2.11+)` },
    async () => {
      const kvA = await new Kvm(ncA).open("ttl");
      const kvB = await new Kvm(ncB).open("ttl");
      await kvA.put("kept", "stays");
      await kvA.create("short", "lived", "2s");
      await until(async () => (await kvB.get("short"))?.string() === "lived", { message: "short reached b" });
      const marker = await until(
        async () => {
          const e = await kvA.get("short");
          return e && e.operation !== "PUT" ? e : null;
        },
        { timeout: 30_000, message: "the server wrote a marker at a" },
      );
      assert.equal(marker.operation, "PURGE");
      const atB = await until(
        async () => {
          const e = await kvB.get("short");
          return e && e.operation !== "PUT" ? e : null;
        },
        { timeout: 30_000, message: "the expiry reached b as a delete" },
      );
      assert.equal(atB.revision > 0, true);
      const raw = await (await jetstreamManager(ncB)).streams.getMessage(kvStream("ttl"), {
        last_by_subj: kvSubject("ttl", "short"),
      });
      assert.ok(raw?.header.get(Headers.ts), "b's delete was written by the merger (a replicated delete)");
      const metaB = (await versions(ncB, "ttl")).get("short");
      assert.equal(metaB?.deleted, true, `b's meta: ${JSON.stringify(metaB)}`);
      assert.equal((await kvB.get("kept"))?.string(), "stays");
    },
  );

  it("I1 the watcher refuses at start a bucket whose entries expire without markers, naming the bucket and the fix", async () => {
    await new Kvm(ncA).create("aged", { history: 1, ttl: 3_600_000 });
    const r = spawnSync(
      process.execPath,
      [
        "services/run.mjs",
        "watcher",
        "--site",
        "a",
        "--nats-url",
        mesh.sites.a?.url as string,
        "--bucket",
        "aged",
      ],
      {
        cwd: REPO_ROOT,
        encoding: "utf8",
        timeout: 60_000,
        env: { ...process.env, NODE_TEST_CONTEXT: undefined },
      },
    );
    assert.notEqual(r.status, 0, `the watcher ran: ${r.stdout}${r.stderr}`);
    assert.match(
      `${r.stdout}${r.stderr}`,
      /refusing to replicate: bucket aged expires entries \(max_age 3600 s\) without delete markers/,
    );
  });
});
