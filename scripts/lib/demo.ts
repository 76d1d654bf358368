/**
 * Helpers of the demo scripts (scripts/demo-*.sh): what the `syncd` CLI does not do — read the local
 * mesh's state, wait (bounded) until every site holds what a demo expects, write two sites at the
 * same instant, make a change behind the services' back, publish a hand-made op, look at a site's
 * ingress backlog. Each talks to the sites' own servers (URLs from `$MESH_DIR/mesh.json`), so it also
 * works while the hub is down.
 *
 *   node --import tsx scripts/lib/demo.ts env
 *   node --import tsx scripts/lib/demo.ts expect <bucket> <key> (--value V | --deleted | --converged) [--sites a,b] [--timeout S]
 *   node --import tsx scripts/lib/demo.ts show <bucket> <key> [--sites a,b]
 *   node --import tsx scripts/lib/demo.ts version <bucket> <key> --site s      (prints "ts node_id")
 *   node --import tsx scripts/lib/demo.ts value <bucket> <key> --site s
 *   node --import tsx scripts/lib/demo.ts put-at-once <bucket> <key> <site>=<value> <site>=<value> ...
 *   node --import tsx scripts/lib/demo.ts plant <bucket> <key> (--value V | --deleted) --site s
 *   node --import tsx scripts/lib/demo.ts pub-op '<op json>' --site s [--timeout S]
 *   node --import tsx scripts/lib/demo.ts wait-backlog --site s --min N [--timeout S]
 *   node --import tsx scripts/lib/demo.ts conflict <bucket> <key> --loser V [--kind K] [--timeout S]
 *
 * Exit codes: 0 ok, 1 the observation is not what was expected (or a timeout), 2 usage, 3 no mesh
 * state (`env` only: the mesh is not up), 4 the mesh is up but not whole (`env` only).
 */
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import { connect } from "@nats-io/transport-node";
import {
  type ClockNowResponse,
  type Conflict,
  Durables,
  OPS_INGRESS,
  Streams,
  type Version,
  endpointSubject,
  metaBucket,
  plantVersion,
  requestJson,
} from "../../services/mod.ts";
import { SERVICE_KINDS, pingSite } from "./services.ts";
import { certFiles, meshDir } from "./topology.ts";

class Usage extends Error {}
/** The observation is not what the demo expected: exit 1 with this message. */
class Mismatch extends Error {}
/** `env`: the mesh is missing (3) or not whole (4). */
class MeshProblem extends Error {
  constructor(
    message: string,
    readonly code: 3 | 4,
  ) {
    super(message);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const env = process.env;

/** The part of mesh.json the demos use (see scripts/mesh.ts). */
type MeshJson = {
  buckets?: string[];
  scale?: string;
  /** SECURE=1 meshes: where the certificates and password files are */
  secure?: { certs: string; secrets: string };
  hub: { url: string };
  sites: Record<string, { url: string; domain: string; node_id: string }>;
};

function meshFile(): string {
  return path.join(meshDir(env), "mesh.json");
}

function readMesh(): MeshJson {
  const f = meshFile();
  if (!existsSync(f))
    throw new MeshProblem(
      `no local mesh: ${f} does not exist. Run ./scripts/up.sh first (or DEMO_START=1 to let the demo start it)`,
      3,
    );
  return JSON.parse(readFileSync(f, "utf8")) as MeshJson;
}

/** A secured mesh (SECURE=1 up.sh): the demos act as its operator, `admin`, over TLS. */
function secureOf(mesh: MeshJson): { ca: string; passwordFile: string } | undefined {
  if (!mesh.secure) return undefined;
  return { ca: certFiles(mesh.secure.certs).ca, passwordFile: path.join(mesh.secure.secrets, "admin") };
}

async function connectTo(mesh: MeshJson, url: string, what: string): Promise<NatsConnection> {
  const sec = secureOf(mesh);
  try {
    return await connect({
      servers: url,
      name: "syncd-demo",
      timeout: 3000,
      maxReconnectAttempts: 0,
      ...(sec
        ? { user: "admin", pass: readFileSync(sec.passwordFile, "utf8").trim(), tls: { caFile: sec.ca } }
        : {}),
    });
  } catch (err) {
    throw new Mismatch(`cannot connect to ${what} at ${url}: ${(err as Error).message}`);
  }
}

/** Connections to some sites of the mesh, closed by `close()`. */
class Sites {
  readonly nc = new Map<string, NatsConnection>();
  private constructor(readonly mesh: MeshJson) {}

  static async open(mesh: MeshJson, names: string[]): Promise<Sites> {
    const s = new Sites(mesh);
    try {
      for (const n of names) {
        const site = mesh.sites[n];
        if (!site)
          throw new Usage(`no site "${n}" in ${meshFile()} (sites: ${Object.keys(mesh.sites).join(", ")})`);
        s.nc.set(n, await connectTo(mesh, site.url, `site ${n}`));
      }
    } catch (err) {
      await s.close();
      throw err;
    }
    return s;
  }

  conn(site: string): NatsConnection {
    const nc = this.nc.get(site);
    if (!nc) throw new Error(`not connected to site ${site}`);
    return nc;
  }

  async kv(site: string, bucket: string): Promise<KV> {
    return new Kvm(this.conn(site)).open(bucket);
  }

  async close(): Promise<void> {
    await Promise.all([...this.nc.values()].map((nc) => nc.close().catch(() => {})));
  }
}

/** What one site holds for a key: the bucket's entry and the `_meta` version. */
type Held = { value: string | null; version: Version | null };

async function held(sites: Sites, site: string, bucket: string, key: string): Promise<Held> {
  const e = await (await sites.kv(site, bucket)).get(key);
  const m = await (await sites.kv(site, metaBucket(bucket))).get(key);
  return {
    value: e && e.operation === "PUT" ? e.string() : null,
    version: m && m.operation === "PUT" ? m.json<Version>() : null,
  };
}

function describe(h: Held): string {
  const v = h.version;
  const ver = v ? `version ts=${v.ts} node=${v.node_id}${v.deleted ? " (tombstone)" : ""}` : "no version";
  return `${h.value === null ? "(no value)" : JSON.stringify(h.value)}  ${ver}`;
}

/** The replicated part of a version: what must be equal at every site once they converged. */
const same = (a: Version | null, b: Version | null): boolean =>
  !!a && !!b && a.ts === b.ts && a.node_id === b.node_id && a.deleted === b.deleted && a.vh === b.vh;

function listOpt(v: string | undefined, all: string[]): string[] {
  if (!v) return all;
  return v
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
}

function secondsOpt(v: string | undefined, def: number): number {
  const n = Number(v ?? def);
  if (!(n > 0)) throw new Usage(`--timeout must be a positive number of seconds, got ${v}`);
  return n * 1000;
}

/** `env`: shell assignments for the demo scripts; checks the mesh is whole first. */
async function envCmd(): Promise<void> {
  const mesh = readMesh();
  const names = Object.keys(mesh.sites);
  if (names.length < 2) throw new MeshProblem(`the mesh has ${names.length} site(s); the demos need two`, 4);
  // every site's server answers, and from the first site every site's four services answer (also
  // through the hub relay: a hub that isolates leaf interest): that also proves the hub links the sites
  const problems: string[] = [];
  const first = names[0] as string;
  let nc: NatsConnection | undefined;
  for (const n of names) {
    try {
      const c = await connectTo(mesh, mesh.sites[n]!.url, `site ${n}`);
      if (n === first) nc = c;
      else await c.close();
    } catch (err) {
      problems.push(`${(err as Error).message} (not running? ./scripts/server.sh ${n} start)`);
    }
  }
  try {
    const hub = await connectTo(mesh, mesh.hub.url, "the hub");
    await hub.close();
  } catch (err) {
    problems.push(`${(err as Error).message} (not running? ./scripts/hub.sh start)`);
  }
  if (nc && problems.length === 0) {
    try {
      const answers = await pingSite(nc, undefined, 400, undefined, true);
      for (const n of names) {
        const kinds = new Set(answers.filter((a) => a.site === n).map((a) => a.kind));
        const missing = SERVICE_KINDS.filter((k) => !kinds.has(k));
        if (missing.length)
          problems.push(
            `site ${n}: ${missing.map((k) => `syncd-${k}`).join(", ")} not answering: ./scripts/site.sh ${n} start`,
          );
      }
    } finally {
      await nc.close();
    }
  } else await nc?.close();
  if (problems.length)
    throw new MeshProblem(`the local mesh (${meshFile()}) is not whole:\n  ${problems.join("\n  ")}`, 4);
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const [a, b] = names as [string, string];
  const lines = [
    `MESH_JSON=${q(meshFile())}`,
    `DEMO_SITES=${q(names.join(" "))}`,
    `DEMO_BUCKET=${q(mesh.buckets?.[0] ?? "config")}`,
    `DEMO_BUCKETS=${q((mesh.buckets ?? ["config"]).join(","))}`,
    `DEMO_SCALE=${q(mesh.scale ?? "")}`,
    `HUB_URL=${q(mesh.hub.url)}`,
    `A=${q(a)}`,
    `B=${q(b)}`,
    `A_URL=${q(mesh.sites[a]!.url)}`,
    `B_URL=${q(mesh.sites[b]!.url)}`,
  ];
  const sec = secureOf(mesh);
  // the CLI logs in as admin with the mesh's CA (the password stays in its file)
  if (sec) lines.push("DEMO_SECURE=1", `DEMO_CA=${q(sec.ca)}`, `DEMO_PASSWORD_FILE=${q(sec.passwordFile)}`);
  else lines.push("DEMO_SECURE=0");
  console.log(lines.join("\n"));
}

/**
 * `expect`: wait until every site holds the value (`--value`), the tombstone or nothing
 * (`--deleted`), or one and the same value whatever it is (`--converged`), under one and the same
 * version.
 */
async function expectCmd(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      value: { type: "string" },
      deleted: { type: "boolean" },
      converged: { type: "boolean" },
      sites: { type: "string" },
      timeout: { type: "string" },
    },
  });
  const [bucket, key] = positionals;
  const modes = [values.value !== undefined, values.deleted === true, values.converged === true];
  if (!bucket || !key || modes.filter(Boolean).length !== 1)
    throw new Usage(
      "usage: expect <bucket> <key> (--value V | --deleted | --converged) [--sites a,b] [--timeout S]",
    );
  const mesh = readMesh();
  const names = listOpt(values.sites, Object.keys(mesh.sites));
  const timeoutMs = secondsOpt(values.timeout, Number(env.DEMO_WAIT || 30));
  const sites = await Sites.open(mesh, names);
  const t0 = Date.now();
  let last = new Map<string, Held>();
  const holds = (all: Held[]): boolean => {
    const vers = all.map((h) => h.version);
    const first = vers[0] ?? null;
    if (values.deleted)
      return (
        all.every((h) => h.value === null) &&
        (vers.every((v) => v === null) || vers.every((v) => v?.deleted === true && same(v, first)))
      );
    const want = values.converged ? all[0]?.value : values.value;
    return (
      want !== null &&
      want !== undefined &&
      all.every((h) => h.value === want) &&
      vers.every((v) => v?.deleted === false && same(v, first))
    );
  };
  const wanted = values.deleted
    ? "deleted"
    : values.converged
      ? "one and the same value"
      : JSON.stringify(values.value);
  try {
    for (;;) {
      last = new Map();
      for (const n of names) last.set(n, await held(sites, n, bucket, key));
      if (holds([...last.values()])) break;
      if (Date.now() - t0 > timeoutMs) {
        const lines = [...last].map(([n, h]) => `  site ${n}: ${describe(h)}`);
        throw new Mismatch(
          `after ${Math.round((Date.now() - t0) / 100) / 10} s, ${key} is not ${wanted} at ${names.length === 1 ? `site ${names[0]}` : `every site (${names.join(", ")})`}:\n${lines.join("\n")}`,
        );
      }
      await sleep(150);
    }
  } finally {
    await sites.close();
  }
  for (const [n, h] of last) console.log(`  site ${n}: ${describe(h)}`);
  const all = [...last.values()];
  const what =
    all[0]?.value !== null && all[0]?.value !== undefined
      ? JSON.stringify(all[0].value)
      : all.some((h) => h.version)
        ? "deleted (tombstone)"
        : "absent (no value, no version)";
  console.log(
    `  => ${key} is ${what} at ${names.length === 1 ? `site ${names[0]}` : `every site (${names.join(", ")}), same version`} after ${Date.now() - t0} ms`,
  );
}

/** `value`: the value a site holds for a key (exit 1 when it holds none). */
async function valueCmd(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { site: { type: "string" } },
  });
  const [bucket, key] = positionals;
  if (!bucket || !key || !values.site) throw new Usage("usage: value <bucket> <key> --site s");
  const sites = await Sites.open(readMesh(), [values.site]);
  try {
    const h = await held(sites, values.site, bucket, key);
    if (h.value === null) throw new Mismatch(`site ${values.site} holds no value of ${key}`);
    console.log(h.value);
  } finally {
    await sites.close();
  }
}

/** `show`: what each site holds now (no waiting, no judgement). */
async function showCmd(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { sites: { type: "string" } },
  });
  const [bucket, key] = positionals;
  if (!bucket || !key) throw new Usage("usage: show <bucket> <key> [--sites a,b]");
  const mesh = readMesh();
  const names = listOpt(values.sites, Object.keys(mesh.sites));
  const sites = await Sites.open(mesh, names);
  try {
    for (const n of names) console.log(`  site ${n}: ${describe(await held(sites, n, bucket, key))}`);
  } finally {
    await sites.close();
  }
}

/** `version`: the `_meta` version of a key at one site, as "ts node_id". */
async function versionCmd(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { site: { type: "string" } },
  });
  const [bucket, key] = positionals;
  if (!bucket || !key || !values.site) throw new Usage("usage: version <bucket> <key> --site s");
  const sites = await Sites.open(readMesh(), [values.site]);
  try {
    const h = await held(sites, values.site, bucket, key);
    if (!h.version) throw new Mismatch(`site ${values.site} has no version of ${key}`);
    console.log(`${h.version.ts} ${h.version.node_id}`);
  } finally {
    await sites.close();
  }
}

/** `put-at-once`: the same key written at several sites at the same instant (a real conflict). */
async function putAtOnceCmd(args: string[]): Promise<void> {
  const [bucket, key, ...writes] = args;
  const pairs = writes.map((w) => {
    const i = w.indexOf("=");
    if (i < 1) throw new Usage(`expected <site>=<value>, got ${w}`);
    return { site: w.slice(0, i), value: w.slice(i + 1) };
  });
  if (!bucket || !key || pairs.length < 2)
    throw new Usage("usage: put-at-once <bucket> <key> <site>=<value> <site>=<value> ...");
  const sites = await Sites.open(
    readMesh(),
    pairs.map((p) => p.site),
  );
  try {
    // open everything first, then fire the writes together: each lands before any op can travel
    const kvs = await Promise.all(pairs.map((p) => sites.kv(p.site, bucket)));
    const t0 = performance.now();
    const revs = await Promise.all(pairs.map((p, i) => kvs[i]!.put(key, p.value)));
    const ms = (performance.now() - t0).toFixed(1);
    pairs.forEach((p, i) =>
      console.log(`  site ${p.site}: put ${key} = ${JSON.stringify(p.value)} (revision ${revs[i]})`),
    );
    console.log(`  => ${pairs.length} writes of ${key} within ${ms} ms, before either could replicate`);
  } finally {
    await sites.close();
  }
}

/**
 * `plant`: change a key at one site behind the services' back — the bucket entry carries version
 * headers (so the watcher takes it for a replicated write and publishes nothing) and `_meta` holds
 * its version — as a restore from a backup, a hand edit or a lost op would leave it. Only
 * anti-entropy can find it. The version is just above the site's clock and the key's version there.
 */
async function plantCmd(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { site: { type: "string" }, value: { type: "string" }, deleted: { type: "boolean" } },
  });
  const [bucket, key] = positionals;
  if (!bucket || !key || !values.site || (values.value === undefined) === !values.deleted)
    throw new Usage("usage: plant <bucket> <key> (--value V | --deleted) --site s");
  const mesh = readMesh();
  const site = values.site;
  const nodeId = mesh.sites[site]?.node_id ?? `site-${site}`;
  const sites = await Sites.open(mesh, [site]);
  try {
    const nc = sites.conn(site);
    const now = (
      await requestJson<ClockNowResponse>(nc, endpointSubject(site, "clock", "now"), {}, { timeout: 5000 })
    ).value;
    const before = await held(sites, site, bucket, key);
    // above everything the site handed out or holds for the key, and (HLC) above physical time
    const physical = now.mode === "hlc" ? now.physical_ms * 1000 : 0;
    const ts = Math.max(now.ts, physical, before.version?.ts ?? 0) + 1;
    const deleted = values.deleted === true;
    const value = deleted ? "" : (values.value as string);
    const rev = before.version?.rev ?? 0;
    await plantVersion(nc, { bucket, key, ts, node_id: nodeId, deleted, value, minRev: rev });
    console.log(
      `  site ${site}: ${deleted ? "deleted" : `wrote ${JSON.stringify(value)} to`} ${bucket}/${key} and its _meta version (ts=${ts} node=${nodeId}) directly — no op published`,
    );
  } finally {
    await sites.close();
  }
}

/** `pub-op`: publish a hand-made op on the site's ingress and wait until its merger consumed it. */
async function pubOpCmd(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { site: { type: "string" }, timeout: { type: "string" } },
  });
  const [op] = positionals;
  if (!op || !values.site) throw new Usage("usage: pub-op '<op json>' --site s [--timeout S]");
  JSON.parse(op); // a typo in a demo should fail here, not in the dead-letter stream
  const site = values.site;
  const timeoutMs = secondsOpt(values.timeout, Number(env.DEMO_WAIT || 30));
  const sites = await Sites.open(readMesh(), [site]);
  try {
    const nc = sites.conn(site);
    const pa = await jetstream(nc).publish(OPS_INGRESS, op);
    console.log(`  site ${site}: published on ${OPS_INGRESS}, stored in ${pa.stream} #${pa.seq}`);
    const jsm = await jetstreamManager(nc);
    const t0 = Date.now();
    for (;;) {
      const ci = await jsm.consumers.info(pa.stream, Durables.merger);
      if (ci.ack_floor.stream_seq >= pa.seq) break;
      if (Date.now() - t0 > timeoutMs)
        throw new Mismatch(
          `site ${site}'s merger did not consume ${pa.stream} #${pa.seq} within ${timeoutMs / 1000} s (ack floor ${ci.ack_floor.stream_seq})`,
        );
      await sleep(100);
    }
    console.log(`  => site ${site}'s merger consumed it after ${Date.now() - t0} ms`);
  } finally {
    await sites.close();
  }
}

/** `wait-backlog`: wait until the site's ingress stream holds at least N ops its merger has not consumed. */
async function waitBacklogCmd(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { site: { type: "string" }, min: { type: "string" }, timeout: { type: "string" } },
  });
  const min = Number(values.min);
  if (!values.site || !Number.isInteger(min) || min < 1)
    throw new Usage("usage: wait-backlog --site s --min N [--timeout S]");
  const site = values.site;
  const timeoutMs = secondsOpt(values.timeout, Number(env.DEMO_WAIT || 30));
  const sites = await Sites.open(readMesh(), [site]);
  try {
    const jsm = await jetstreamManager(sites.conn(site));
    const t0 = Date.now();
    let pending = 0;
    for (;;) {
      const ci = await jsm.consumers.info(Streams.in(site), Durables.merger);
      pending = ci.num_pending + ci.num_ack_pending;
      if (pending >= min) break;
      if (Date.now() - t0 > timeoutMs)
        throw new Mismatch(
          `${Streams.in(site)} holds ${pending} unconsumed op(s) after ${timeoutMs / 1000} s, expected at least ${min}`,
        );
      await sleep(150);
    }
    console.log(
      `  site ${site}: ${Streams.in(site)} holds ${pending} op(s) waiting for its merger (consumer ${Durables.merger})`,
    );
  } finally {
    await sites.close();
  }
}

/** `conflict`: wait until some site's conflict log holds the losing value of the key. */
async function conflictCmd(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { loser: { type: "string" }, kind: { type: "string" }, timeout: { type: "string" } },
  });
  const [bucket, key] = positionals;
  if (!bucket || !key || values.loser === undefined)
    throw new Usage("usage: conflict <bucket> <key> --loser V [--kind stale_op|overwritten] [--timeout S]");
  const mesh = readMesh();
  const names = Object.keys(mesh.sites);
  const timeoutMs = secondsOpt(values.timeout, Number(env.DEMO_WAIT || 30));
  const sites = await Sites.open(mesh, names);
  const t0 = Date.now();
  try {
    for (;;) {
      const found: { site: string; c: Conflict }[] = [];
      for (const n of names) {
        const jsm = await jetstreamManager(sites.conn(n));
        let last = 0;
        try {
          last = (await jsm.streams.info(Streams.conflicts(n))).state.last_seq;
        } catch {
          continue; // no conflict stream yet
        }
        // the newest records are enough: a demo's conflict is recent
        for (let seq = last; seq > 0 && seq > last - 50; seq--) {
          const m = await jsm.streams.getMessage(Streams.conflicts(n), { seq }).catch(() => null);
          if (!m) continue;
          const c = m.json<Conflict>();
          if (
            c.bucket === bucket &&
            c.key === key &&
            c.loser.value === values.loser &&
            (values.kind === undefined || c.kind === values.kind)
          )
            found.push({ site: n, c });
        }
      }
      if (found.length) {
        for (const { site, c } of found)
          console.log(
            `  site ${site}: conflict (${c.kind ?? "?"}) — lost ${JSON.stringify(c.loser.value)} (ts=${c.loser.ts} node=${c.loser.node_id}), won ${c.winner.deleted ? "a delete" : JSON.stringify(c.winner.value)} (ts=${c.winner.ts} node=${c.winner.node_id})`,
          );
        return;
      }
      if (Date.now() - t0 > timeoutMs)
        throw new Mismatch(
          `no conflict record of ${key} with the losing value ${JSON.stringify(values.loser)} at any site`,
        );
      await sleep(200);
    }
  } finally {
    await sites.close();
  }
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...args] = argv;
  switch (cmd) {
    case "env":
      await envCmd();
      return 0;
    case "expect":
      await expectCmd(args);
      return 0;
    case "show":
      await showCmd(args);
      return 0;
    case "version":
      await versionCmd(args);
      return 0;
    case "value":
      await valueCmd(args);
      return 0;
    case "put-at-once":
      await putAtOnceCmd(args);
      return 0;
    case "plant":
      await plantCmd(args);
      return 0;
    case "pub-op":
      await pubOpCmd(args);
      return 0;
    case "wait-backlog":
      await waitBacklogCmd(args);
      return 0;
    case "conflict":
      await conflictCmd(args);
      return 0;
    default:
      throw new Usage(
        "usage: demo.ts env | expect | show | version | value | put-at-once | plant | pub-op | wait-backlog | conflict (see the file's header)",
      );
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof Usage) {
      console.error(err.message);
      process.exit(2);
    }
    if (err instanceof MeshProblem) {
      console.error(err.message);
      process.exit(err.code);
    }
    if (err instanceof Mismatch) {
      console.error(`  !! ${err.message}`);
      process.exit(1);
    }
    console.error(`  !! ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
