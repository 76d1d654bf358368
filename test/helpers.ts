/**
 * Assertions and waits shared by the integration tests: reading buckets and versions, counting ops,
 * and waiting until a mesh is quiet (every consumer and source caught up).
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before } from "node:test";
import { type JetStreamManager, jetstreamManager } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import { freePort, freePortBlock } from "../scripts/lib/proc.ts";
import { REPO_ROOT } from "../scripts/lib/topology.ts";
import {
  type Planting,
  Streams,
  type Version,
  endpointSubject,
  kvStream,
  metaBucket,
  parseReply,
  plantVersion as plant,
  requestAnywhere,
  requestJson,
  siteLinked,
  siteQuiet,
} from "../services/mod.ts";
import { type Mesh, type MeshOptions, startMesh, waitFor } from "./harness/mesh.ts";

/** The harness's waitFor with the integration tests' defaults (15 s, polls every 100 ms). */
export function until<T>(
  fn: () => Promise<T> | T,
  opts: { timeout?: number; interval?: number; message?: string } = {},
): ReturnType<typeof waitFor<T>> {
  return waitFor(fn, { timeout: 15_000, interval: 100, ...opts });
}

/** The contents of a bucket: key → value (text), tombstones and deleted keys absent. */
export async function contents(kv: KV): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for await (const k of await kv.keys()) {
    const e = await kv.get(k);
    if (e?.operation === "PUT") out.set(k, e.string());
  }
  return out;
}

/** The `_meta` versions of a site: key → version. */
export async function versions(nc: NatsConnection, bucket = "config"): Promise<Map<string, Version>> {
  const kv = await new Kvm(nc).open(metaBucket(bucket));
  const out = new Map<string, Version>();
  for await (const k of await kv.keys()) {
    const e = await kv.get(k);
    if (e?.operation === "PUT") out.set(k, e.json<Version>());
  }
  return out;
}

/** The replicated part of a version (without the site-local `rev` and `merged`), for comparing sites. */
export function replicated(
  v: Version | undefined,
): Pick<Version, "ts" | "node_id" | "deleted" | "vh"> | undefined {
  return v && { ts: v.ts, node_id: v.node_id, deleted: v.deleted, ...(v.vh ? { vh: v.vh } : {}) };
}

/**
 * A change made behind the services' back, as a merger would make it but without any op
 * (services/lib/plant.ts); the bucket defaults to `config`.
 */
export function plantVersion(nc: NatsConnection, p: Omit<Planting, "bucket"> & { bucket?: string }) {
  return plant(nc, { ...p, bucket: p.bucket ?? "config" });
}

/** Number of messages stored in a stream. */
export async function streamCount(jsm: JetStreamManager, stream: string): Promise<number> {
  return (await jsm.streams.info(stream)).state.messages;
}

/** The hub's JetStream domain in the tests (the services' default). */
export const HUB_DOMAIN = "hub";

/** Wait until every given site is quiet twice in a row. */
export async function quiet(
  ncs: Record<string, NatsConnection>,
  opts: { timeout?: number } = {},
): Promise<void> {
  let streak = 0;
  await until(
    async () => {
      const all = await Promise.all(
        Object.entries(ncs).map(([s, nc]) =>
          siteQuiet(nc, s, { buckets: ["config"], hubDomain: HUB_DOMAIN }),
        ),
      );
      streak = all.every(Boolean) ? streak + 1 : 0;
      return streak >= 2;
    },
    { timeout: opts.timeout ?? 20_000, interval: 150, message: "mesh did not become quiet" },
  );
}

/**
 * Wait until replication is on between a site and the given peers: the hub's aggregate sources each
 * of their op logs and the site's own (the watchers register them) and the site's IN stream sources
 * the aggregate (the merger creates it so).
 */
export async function peersLinked(
  nc: NatsConnection,
  site: string,
  peers: string[],
  timeout = 20_000,
): Promise<void> {
  await until(() => siteLinked(nc, site, peers, { hubDomain: HUB_DOMAIN }), {
    timeout,
    message: `site ${site} and ${peers.join(",")} are not all linked through the hub`,
  });
}

/** Whether a connection is to a server of `site` (server_name `site-<site>`, `site-<site>-<n>` in a cluster). */
export function atSite(nc: NatsConnection, site: string): boolean {
  const name = nc.info?.server_name ?? "";
  return name === `site-${site}` || new RegExp(`^site-${site}-\\d+$`).test(name);
}

/**
 * Call a syncd endpoint of a site: directly from a connection at that site (no responders fails at
 * once, as tests that wait for a restarting service expect), else directly or through the hub relay
 * (a hub that isolates leaf interest).
 */
export async function call<T>(
  nc: NatsConnection,
  site: string,
  service: "clock" | "watcher" | "merger" | "reconciler",
  endpoint: string,
  body: unknown = {},
): Promise<T> {
  const subject = endpointSubject(site, service, endpoint);
  if (atSite(nc, site)) return (await requestJson<T>(nc, subject, body, { timeout: 10_000 })).value;
  const data = new TextEncoder().encode(JSON.stringify(body ?? {}));
  return parseReply<T>(await requestAnywhere(nc, subject, { data }, 10_000), subject, data.length).value;
}

/** A started mesh with a connection and the `config` bucket of every site, each site sourcing every other. */
export type LinkedMesh = { mesh: Mesh; nc: Record<string, NatsConnection>; kv: Record<string, KV> };

/** startMesh's options, and how long to wait for the links (default 20 s). */
export type LinkedMeshOptions = MeshOptions & { linkTimeoutMs?: number };

/** Start a mesh and wait until every site's IN stream sources every other site (replication is on). */
export async function startLinkedMesh(opts: LinkedMeshOptions = {}): Promise<LinkedMesh> {
  const sites = opts.sites ?? ["a", "b"];
  const mesh = await startMesh({ ...opts, sites });
  const nc: Record<string, NatsConnection> = {};
  const kv: Record<string, KV> = {};
  for (const s of sites) {
    nc[s] = await mesh.connect(s);
    kv[s] = await mesh.kv(s);
  }
  for (const s of sites)
    await peersLinked(
      nc[s]!,
      s,
      sites.filter((p) => p !== s),
      opts.linkTimeoutMs,
    );
  return { mesh, nc, kv };
}

/**
 * startLinkedMesh for the tests of the enclosing describe block: started in `before`, stopped in
 * `after`. `nc` and `kv` are filled in by `before`; `mesh` stands for the mesh started there (using
 * it outside the tests throws).
 */
export function withLinkedMesh(opts: LinkedMeshOptions = {}): LinkedMesh {
  return meshOfBlock("withLinkedMesh", () => startLinkedMesh(opts));
}

/** How a script of scripts/ ended: exit code (null when killed), stdout and stderr, duration. */
export type ScriptRun = { code: number | null; out: string; ms: number };

/** Run `scripts/<script>` from the repo root with `env`, killed after `timeoutMs`. */
export function runScript(script: string, env: NodeJS.ProcessEnv, timeoutMs = 120_000): ScriptRun {
  const t0 = Date.now();
  const r = spawnSync(path.join(REPO_ROOT, "scripts", script), [], {
    cwd: REPO_ROOT,
    env,
    encoding: "utf8",
    timeout: timeoutMs,
    killSignal: "SIGKILL",
  });
  return { code: r.status, out: `${r.stdout}${r.stderr}`, ms: Date.now() - t0 };
}

/** A local mesh of ./scripts/up.sh: its MESH_DIR, the environment its scripts run with. */
export type UpMesh = {
  dir: string;
  /** set in `before` */
  env: NodeJS.ProcessEnv;
  run: (script: string, timeoutMs?: number) => ScriptRun;
};

/**
 * The environment of ./scripts/up.sh for the tests of the enclosing describe block: a temp MESH_DIR,
 * sites a and b on free ports (set in `before`, with `extra` on top); the tests run up.sh themselves.
 * `after` runs down.sh whatever happened and removes the dir (KEEP_MESH=1 keeps it).
 */
export function withUpMesh(name: string, extra: NodeJS.ProcessEnv = {}): UpMesh {
  const m: UpMesh = {
    dir: mkdtempSync(path.join(os.tmpdir(), `syncd-${name}-`)),
    env: {},
    run: (script, timeoutMs) => runScript(script, m.env, timeoutMs),
  };
  before(async () => {
    const base = await freePortBlock(4);
    m.env = {
      ...process.env,
      MESH_DIR: m.dir,
      SITES: "a b",
      HUB_PORT: String(await freePort()),
      HUB_HTTP_PORT: String(await freePort()),
      HUB_LEAF_PORT: String(await freePort()),
      SITE_BASE_PORT: String(base),
      SITE_PORT_STEP: "2",
      NODE_TEST_CONTEXT: undefined,
      ...extra,
    };
  });
  after(() => {
    if (m.env.MESH_DIR) m.run("down.sh");
    if (process.env.KEEP_MESH === "1") console.error(`KEEP_MESH=1: kept ${m.dir}`);
    else rmSync(m.dir, { recursive: true, force: true });
  });
  return m;
}

/**
 * startMesh for the tests of the enclosing describe block, without waiting for replication (see
 * withLinkedMesh): started in `before` with a connection to every site in `nc`, stopped in `after`.
 */
export function withMesh(opts: MeshOptions = {}): Omit<LinkedMesh, "kv"> {
  return meshOfBlock("withMesh", async () => {
    const mesh = await startMesh(opts);
    const nc: Record<string, NatsConnection> = {};
    for (const s of opts.sites ?? ["a", "b"]) nc[s] = await mesh.connect(s);
    return { mesh, nc, kv: {} };
  });
}

/** A mesh `start`ed in `before` and stopped in `after`; `mesh` forwards to it once started. */
function meshOfBlock(name: string, start: () => Promise<LinkedMesh>): LinkedMesh {
  const nc: Record<string, NatsConnection> = {};
  const kv: Record<string, KV> = {};
  let started: Mesh | undefined;
  const mesh = new Proxy({} as Mesh, {
    get(_, prop) {
      if (!started) throw new Error(`${name}: the mesh is started in before(); use it in the tests`);
      return Reflect.get(started, prop, started);
    },
  });
  before(async () => {
    const m = await start();
    started = m.mesh;
    Object.assign(nc, m.nc);
    Object.assign(kv, m.kv);
  });
  after(async () => {
    await started?.stop();
  });
  return { mesh, nc, kv };
}

/** How the syncd CLI ended: exit code (null when killed), stdout, stderr. */
export type CliRun = { code: number | null; stdout: string; stderr: string };

/**
 * Run the syncd CLI (services/cli/main.ts under tsx, or `entry` instead) from the repo root with
 * `args`, in `env` (default: this process's environment without NATS_* settings).
 */
export function runSyncdCli(
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; entry?: string[] } = {},
): Promise<CliRun> {
  const env =
    opts.env ?? Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("NATS_")));
  const entry = opts.entry ?? ["--import", "tsx", path.join(REPO_ROOT, "services", "cli", "main.ts")];
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [...entry, ...args], { cwd: REPO_ROOT, env });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    p.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    p.on("error", reject);
    p.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * A value lost at `site` with no op left to repair it from: `key` written there, and once `peer`
 * holds it, the site's op logs and its `config` bucket purged (its `_meta` still holds the version).
 */
export async function loseValue(
  m: LinkedMesh,
  site: string,
  peer: string,
  key: string,
  value: string,
  timeout = 30_000,
): Promise<void> {
  await m.kv[site]!.put(key, value);
  await until(async () => (await m.kv[peer]!.get(key))?.string() === value, {
    timeout,
    message: `${key} did not reach ${peer}`,
  });
  const jsm = await jetstreamManager(m.nc[site]!);
  await jsm.streams.purge(Streams.out(site));
  await jsm.streams.purge(Streams.in(site));
  await jsm.streams.purge(kvStream("config"));
}
