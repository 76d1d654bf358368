/**
 * The opt-in HTTP port of every service (services/lib/http.ts, metrics.ts, runtime.ts): /metrics in
 * the Prometheus text format with the counts the services keep, /healthz (connected to NATS) and
 * /readyz (wired, its consumers exist), on a real two-site mesh; and deploy/prometheus/alerts.yml
 * uses only metric names the services export.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { type Proc, freePort, spawnLogged, stopProc, tail } from "../scripts/lib/proc.ts";
import { Durables, METRIC_NAMES, kvStream } from "../services/mod.ts";
import { type Mesh, startMesh, waitFor } from "./harness/mesh.ts";

const REPO = join(fileURLToPath(import.meta.url), "..", "..");
const KINDS = ["clock", "watcher", "merger", "reconciler"] as const;
type Kind = (typeof KINDS)[number];

async function get(url: string): Promise<{ status: number; body: string; type: string }> {
  const r = await fetch(url);
  return { status: r.status, body: await r.text(), type: r.headers.get("content-type") ?? "" };
}

/** The value of one sample line of a Prometheus text (labels given as they print), or undefined. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`)))
      return Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return undefined;
}

describe("HTTP port: /metrics, /healthz, /readyz", () => {
  let mesh: Mesh;
  const procs: Record<string, Record<Kind, { proc: Proc; base: string }>> = {};

  before(async () => {
    mesh = await startMesh({ sites: ["a", "b"], services: false });
    for (const site of ["a", "b"]) {
      const kinds = {} as Record<Kind, { proc: Proc; base: string }>;
      for (const kind of KINDS) {
        const port = await freePort();
        const proc = spawnLogged({
          cmd: process.execPath,
          args: [
            "services/run.mjs",
            kind,
            "--site",
            site,
            "--server",
            mesh.sites[site]!.url,
            "--http-port",
            String(port),
            "--http-host",
            "127.0.0.1",
            "--reconcile-interval",
            "0",
          ],
          cwd: REPO,
          env: { ...process.env },
          logFile: join(mesh.dir, "http", `${site}-${kind}.log`),
          marker: "services/run.mjs",
        });
        kinds[kind] = { proc, base: `http://127.0.0.1:${port}` };
      }
      procs[site] = kinds;
    }
    for (const site of ["a", "b"])
      for (const kind of KINDS) {
        const { base, proc } = procs[site]![kind];
        try {
          await waitFor(async () => (await get(`${base}/readyz`)).status === 200, {
            timeout: 60_000,
            message: `${site}/${kind} ready`,
          });
        } catch (err) {
          throw new Error(`${(err as Error).message}\n${tail(proc.logFile, 30)}`);
        }
      }
  });
  after(async () => {
    await Promise.all(Object.values(procs).flatMap((k) => Object.values(k).map((p) => stopProc(p.proc))));
    await mesh?.stop();
  });

  it("counts of a write that travels a→b: watcher at a, merger at b; backlog and lag gauges; every name exported", async () => {
    const kv = await mesh.kv("a");
    await kv.put("m.k", "v1");
    const kvb = await mesh.kv("b");
    await waitFor(async () => (await kvb.get("m.k"))?.string() === "v1", { timeout: 30_000 });
    const merger = await get(`${procs.b!.merger.base}/metrics`);
    assert.equal(merger.status, 200);
    assert.match(merger.type, /^text\/plain; version=0\.0\.4/);
    assert.match(merger.body, /# TYPE syncd_merger_ops_total counter/);
    assert.ok(
      (sample(merger.body, "syncd_merger_ops_total", {
        result: "applied",
        site: "b",
        service: "syncd-merger",
      }) ?? 0) >= 1,
      merger.body,
    );
    assert.equal(sample(merger.body, "syncd_merger_backlog", { site: "b" }), 0);
    assert.equal(sample(merger.body, "syncd_ready"), 1);
    assert.equal(sample(merger.body, "syncd_nats_connected"), 1);
    const watcher = await get(`${procs.a!.watcher.base}/metrics`);
    assert.ok(
      (sample(watcher.body, "syncd_watcher_ops_total", { bucket: "config", outcome: "published" }) ?? 0) >= 1,
    );
    assert.equal(sample(watcher.body, "syncd_watcher_lag", { bucket: "config" }), 0);
    const clock = await get(`${procs.a!.clock.base}/metrics`);
    assert.ok((sample(clock.body, "syncd_clock_ticks_total") ?? 0) >= 1, clock.body);
    // every name of METRIC_NAMES is exported by some service (HELP line at least)
    const all = (
      await Promise.all(KINDS.map(async (k) => (await get(`${procs.b![k].base}/metrics`)).body))
    ).join("\n");
    for (const name of Object.values(METRIC_NAMES))
      assert.match(all, new RegExp(`^# HELP ${name} `, "m"), name);
    assert.equal((await get(`${procs.b!.merger.base}/nope`)).status, 404);
  });

  it("/readyz fails while a service's durable consumer is missing; /healthz fails while NATS is away", async () => {
    const nc = await mesh.connect("b");
    const { jetstreamManager } = await import("@nats-io/jetstream");
    const { Kvm } = await import("@nats-io/kv");
    const jsm = await jetstreamManager(nc);
    // the bucket deleted: the watcher's durable is gone and cannot be re-made until the bucket is back
    // (a deleted durable alone is re-made within moments: services/lib/consume.ts)
    await jsm.streams.delete(kvStream("config"));
    const r = await waitFor(async () => {
      const x = await get(`${procs.b!.watcher.base}/readyz`);
      return x.status === 503 ? x : undefined;
    });
    const body = JSON.parse(r.body) as { ok: boolean; checks: Record<string, unknown> };
    assert.equal(body.ok, false);
    assert.notEqual(body.checks[`consumer ${kvStream("config")}/${Durables.watcher("b", "config")}`], true);
    assert.equal((await get(`${procs.b!.watcher.base}/healthz`)).status, 200);
    await new Kvm(nc).create("config", { history: 1 });
    await waitFor(async () => (await get(`${procs.b!.watcher.base}/readyz`)).status === 200, {
      timeout: 30_000,
    });

    await mesh.stopServer("b");
    try {
      const h = await waitFor(async () => {
        const x = await get(`${procs.b!.watcher.base}/healthz`);
        return x.status === 503 ? x : undefined;
      });
      assert.equal((JSON.parse(h.body) as { checks: { nats: unknown } }).checks.nats, "disconnected");
      assert.equal((await get(`${procs.b!.watcher.base}/readyz`)).status, 503);
    } finally {
      await mesh.startServer("b");
    }
    await waitFor(async () => (await get(`${procs.b!.watcher.base}/healthz`)).status === 200, {
      timeout: 30_000,
    });
  });
});

describe("deploy/prometheus/alerts.yml", () => {
  it("every syncd_ metric an expression names is one the services export", () => {
    const text = readFileSync(join(REPO, "deploy/prometheus/alerts.yml"), "utf8");
    const exprs = [...text.matchAll(/^\s*expr:\s*(.+)$/gm)].map((m) => m[1]!);
    assert.ok(exprs.length >= 5, "some alert rules");
    const known = new Set<string>(Object.values(METRIC_NAMES));
    const used = new Set(exprs.flatMap((e) => [...e.matchAll(/\bsyncd_[a-z_]+\b/g)].map((m) => m[0])));
    assert.ok(used.size >= 5);
    for (const name of used) assert.ok(known.has(name), `alerts.yml uses ${name}, which no service exports`);
  });
});
