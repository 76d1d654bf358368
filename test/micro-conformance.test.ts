/**
 * Micro protocol conformance (ADR-32, DESIGN §3): at every server of a 2-site mesh (hub, site a,
 * site b), `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` reach every instance of every site (4 services ×
 * 2 sites; at a site of a hub that isolates leaf interest, that site's instances only), every reply passes the official jsm.go schemas (test/fixtures/micro-schemas, ajv), and the
 * real `nats` CLI — which decodes each reply into nats.go's micro.Ping/Info/Stats and validates it
 * against those schemas — lists, describes and counts every instance exactly as the services reply
 * (`nats micro ls/info/stats --json`), and refuses a reply that breaks the protocol. Without the CLI
 * (no Go) the CLI part skips and the schema part runs. Plus the syncd conventions: metadata
 * (site, node_id, domain, buckets, clock, instance), strict semver version, endpoint subjects
 * `syncd.<site>.<kind>.<name>`, queue group, and `schema.request` / `schema.response` metadata naming
 * files of the repo.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { Empty, type Msg, type NatsConnection, createInbox } from "@nats-io/nats-core";
import { QUEUE_GROUP, ServiceName } from "../services/mod.ts";
import { type Mesh, eventually, sleep, startMesh } from "./harness/mesh.ts";
import { type MicroKind, type SchemaCheck, checkMicroSchema as checkSchema } from "./micro-schemas.ts";
import { NATS_CLI_MISSING, natsAsync, natsJson } from "./natscli.ts";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const SITES = ["a", "b"] as const;
const KINDS = Object.keys(ServiceName) as (keyof typeof ServiceName)[];
const VERBS: Record<MicroKind, string> = { ping: "PING", info: "INFO", stats: "STATS" };
/** semver.org's regular expression (also nats.go's): no leading zeros, optional pre-release and build */
const SEMVER =
  /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$/;
const PACKAGE_VERSION = (
  JSON.parse(readFileSync(path.join(REPO, "package.json"), "utf8")) as { version: string }
).version;
const dec = new TextDecoder();
/** how long replies to one discovery request are collected */
const COLLECT_MS = 1000;

type Identity = { name: string; id: string; version: string; metadata: Record<string, string> | null };
type InfoReply = Identity & {
  description: string;
  endpoints: {
    name: string;
    subject: string;
    queue_group: string;
    metadata: Record<string, string> | null;
  }[];
};
type StatsReply = Identity & {
  started: string;
  endpoints: {
    name: string;
    subject: string;
    num_requests: number;
    num_errors: number;
    last_error: string;
  }[];
};

/** One reply as collected: where it came from, its bytes and the schema's verdict. */
type Reply = { server: string; kind: MicroKind; msg: Msg; check: SchemaCheck };

/** Publish a discovery request with an inbox reply subject and collect every reply for `ms`. */
async function collect(nc: NatsConnection, subject: string, ms: number): Promise<Msg[]> {
  const inbox = createInbox();
  const out: Msg[] = [];
  const sub = nc.subscribe(inbox, {
    callback: (err, m) => {
      if (!err) out.push(m);
    },
  });
  await nc.flush();
  nc.publish(subject, Empty, { reply: inbox });
  await sleep(ms);
  sub.unsubscribe();
  return out;
}

function describeReply(r: Reply): string {
  const hdr = r.msg.headers
    ? ` headers ${JSON.stringify(Object.fromEntries([...r.msg.headers.keys()].map((k) => [k, r.msg.headers?.get(k)])))}`
    : "";
  return `$SRV.${VERBS[r.kind]} at ${r.server}:${hdr} ${dec.decode(r.msg.data).slice(0, 2000)}`;
}

/** "syncd-clock@a" for a reply that decoded, else its subject-less description. */
function instanceKey(v: Identity): string {
  return `${v.name}@${v.metadata?.site ?? "?"}`;
}

describe("micro conformance at every server of a 2-site mesh", () => {
  let mesh: Mesh;
  const servers: Record<string, NatsConnection> = {};
  /** server → kind → replies */
  const replies: Record<string, Record<MicroKind, Reply[]>> = {};
  /** "<instance id> <endpoint>" of every endpoint that got requests before the replies were collected */
  const exercised: string[] = [];
  /**
   * Whether discovery at `server` ("hub", "site a", …) reaches an instance of `site`: at the hub
   * always; at a site, its own instances only when the hub isolates leaf interest (the default on
   * nats-server 2.12+), every site's otherwise.
   */
  const reaches = (server: string, site: string | undefined) =>
    !mesh.topology.hub.isolate || server === "hub" || server === `site ${site}`;

  before(async () => {
    mesh = await startMesh({ sites: [...SITES], scale: { clock: 1, watcher: 1, merger: 1, reconciler: 1 } });
    servers.hub = await mesh.connectHub();
    for (const s of SITES) servers[`site ${s}`] = await mesh.connect(s);
    const expected = (server: string) => SITES.filter((s) => reaches(server, s)).length * KINDS.length;
    const syncdReplies = (msgs: Msg[]) => msgs.filter((m) => /"syncd-/.test(dec.decode(m.data)));
    // Interest of the leaf sites' services has to reach the hub: wait until every server sees all 8.
    await eventually(
      async () => {
        for (const [server, nc] of Object.entries(servers)) {
          const n = syncdReplies(await collect(nc, "$SRV.PING", 300)).length;
          assert.ok(
            n >= expected(server),
            `${server}: ${n} of ${expected(server)} instances answer $SRV.PING`,
          );
        }
      },
      { timeout: 15000, interval: 200, message: "every server reaches every instance" },
    );
    // Give the stats something to show: every endpoint of every instance gets `{}` (served or
    // refused, depending on the endpoint) and a payload that is not JSON (refused with 400).
    for (const s of SITES) {
      const nc = servers[`site ${s}`] as NatsConnection;
      for (const m of await collect(nc, "$SRV.INFO", 500)) {
        const info = JSON.parse(dec.decode(m.data)) as InfoReply;
        if (!info.name?.startsWith("syncd-") || info.metadata?.site !== s) continue;
        for (const e of info.endpoints ?? []) {
          exercised.push(`${info.id} ${e.name}`);
          for (const payload of ["{}", "not json"])
            await nc.request(e.subject, payload, { timeout: 10000 }).catch(() => undefined);
        }
      }
    }
    // The replies the checks below look at: every verb at every server, collected for COLLECT_MS.
    await eventually(
      async () => {
        const round = await Promise.all(
          Object.entries(servers).flatMap(([server, nc]) =>
            (Object.keys(VERBS) as MicroKind[]).map(async (kind) => {
              const msgs = await collect(nc, `$SRV.${VERBS[kind]}`, COLLECT_MS);
              return { server, kind, msgs };
            }),
          ),
        );
        for (const { server, kind, msgs } of round) {
          const n = syncdReplies(msgs).length;
          assert.ok(
            n >= expected(server),
            `${server} $SRV.${VERBS[kind]}: ${n} of ${expected(server)} replies`,
          );
        }
        for (const { server, kind, msgs } of round) {
          replies[server] ??= { ping: [], info: [], stats: [] };
          replies[server][kind] = msgs.map((msg) => ({
            server,
            kind,
            msg,
            check: checkSchema(kind, msg.data),
          }));
        }
      },
      { timeout: 10000, interval: 200, message: "every server reaches every instance" },
    );
  });
  after(async () => {
    await mesh?.stop();
  });

  it("the schema fixtures are the official files, unmodified (git blob hashes of jsm.go)", () => {
    const blobs: Record<string, string> = {
      "ping_response.json": "fd491bda009db542248d583a7906d2b29a745986",
      "info_response.json": "d82a3d83d44ee21b5585ddc7de32bb52af300098",
      "stats_response.json": "220f3f37a5c9c3efe2b23ad36e0e7edf04cc01cf",
    };
    for (const [file, blob] of Object.entries(blobs)) {
      const bytes = readFileSync(path.join(REPO, "test/fixtures/micro-schemas", file));
      const sha = createHash("sha1").update(`blob ${bytes.length}\0`).update(bytes).digest("hex");
      assert.equal(sha, blob, `${file} differs from nats-io/jsm.go schemas/micro/v1/${file}`);
    }
  });

  for (const kind of Object.keys(VERBS) as MicroKind[]) {
    it(`$SRV.${VERBS[kind]} at the hub and at both sites lists every instance of every site, each reply passing the official schema`, () => {
      const want = SITES.flatMap((s) => KINDS.map((k) => `${ServiceName[k]}@${s}`)).sort();
      const failures: string[] = [];
      const idsByServer: Record<string, string[]> = {};
      for (const [server, byKind] of Object.entries(replies)) {
        const seen: string[] = [];
        const ids: string[] = [];
        for (const r of byKind[kind]) {
          if (!r.check.ok) {
            failures.push(`${r.check.stage}: ${r.check.errors.join("; ")}\n    reply: ${describeReply(r)}`);
            continue;
          }
          const v = r.check.normalized as Identity;
          if (!v.name.startsWith("syncd-")) continue;
          seen.push(instanceKey(v));
          ids.push(v.id);
        }
        assert.deepEqual(
          seen.sort(),
          want.filter((w) => reaches(server, w.split("@")[1])),
          `instances answering $SRV.${VERBS[kind]} at ${server}`,
        );
        assert.equal(new Set(ids).size, ids.length, `instance ids are unique at ${server}`);
        idsByServer[server] = ids.sort();
      }
      assert.deepEqual(failures, [], `replies the official schema refuses:\n  ${failures.join("\n  ")}`);
      for (const [server, ids] of Object.entries(idsByServer))
        for (const id of ids)
          assert.ok(idsByServer.hub?.includes(id), `${server} reaches ${id}, which the hub does not`);
    });
  }

  it("every instance announces site, node_id, domain, buckets, clock and instance, and a strict semver version", () => {
    for (const r of replies.hub?.info ?? []) {
      assert.ok(r.check.ok);
      const v = r.check.normalized as InfoReply;
      if (!v.name.startsWith("syncd-")) continue;
      const who = `${v.name} ${v.id}`;
      const md = v.metadata ?? {};
      for (const k of ["site", "node_id", "domain", "buckets", "clock", "instance"])
        assert.ok(
          typeof md[k] === "string" && md[k] !== "",
          `${who}: metadata.${k} missing or empty (${JSON.stringify(md)})`,
        );
      const site = md.site as string;
      assert.ok((SITES as readonly string[]).includes(site), `${who}: site ${site}`);
      assert.equal(md.node_id, mesh.sites[site]?.nodeId, `${who}: node_id`);
      assert.deepEqual(md.buckets?.split(","), ["config"], `${who}: buckets`);
      assert.match(v.version, SEMVER, `${who}: version ${v.version} is not strict semver`);
      assert.equal(v.version, PACKAGE_VERSION, `${who}: version is the package version`);
      assert.ok(v.description.length > 0, `${who}: description`);
    }
  });

  it("every endpoint listens on syncd.<site>.<kind>.<name> in the shared queue group and names schema files that exist", () => {
    for (const r of replies.hub?.info ?? []) {
      assert.ok(r.check.ok);
      const v = r.check.normalized as InfoReply;
      if (!v.name.startsWith("syncd-")) continue;
      const kind = v.name.replace(/^syncd-/, "");
      const site = v.metadata?.site ?? "";
      assert.ok(v.endpoints.length > 0, `${v.name}@${site} has endpoints`);
      for (const e of v.endpoints) {
        const who = `${v.name}@${site} endpoint ${e.name}`;
        assert.equal(e.subject, `syncd.${site}.${kind}.${e.name}`, `${who}: subject`);
        assert.equal(e.queue_group, QUEUE_GROUP, `${who}: queue group`);
        for (const k of ["schema.request", "schema.response"]) {
          const file = e.metadata?.[k];
          assert.ok(file, `${who}: metadata ${k} missing (${JSON.stringify(e.metadata)})`);
          assert.match(file, /^schemas\/[\w./-]+\.json$/, `${who}: ${k} = ${file}`);
          assert.ok(!file.split("/").includes(".."), `${who}: ${k} = ${file} leaves schemas/`);
          assert.ok(existsSync(path.join(REPO, file)), `${who}: ${k} = ${file} does not exist in the repo`);
        }
      }
    }
  });

  it("STATS of an instance lists the endpoints its INFO lists, with the requests made to them counted", () => {
    const info = new Map<string, string[]>();
    for (const r of replies.hub?.info ?? [])
      if (r.check.ok) {
        const v = r.check.normalized as InfoReply;
        info.set(v.id, v.endpoints.map((e) => `${e.name} ${e.subject}`).sort());
      }
    for (const r of replies.hub?.stats ?? []) {
      assert.ok(r.check.ok);
      const v = r.check.normalized as StatsReply;
      if (!v.name.startsWith("syncd-")) continue;
      assert.deepEqual(
        v.endpoints.map((e) => `${e.name} ${e.subject}`).sort(),
        info.get(v.id),
        `${instanceKey(v)} ${v.id}`,
      );
      for (const e of v.endpoints) {
        const who = `${instanceKey(v)} endpoint ${e.name}`;
        assert.ok(exercised.includes(`${v.id} ${e.name}`), `${who} was exercised`);
        // one or two requests per verb can come from elsewhere (peers, the services themselves)
        assert.ok(e.num_requests >= 2, `${who}: num_requests ${e.num_requests} < 2`);
        assert.ok(
          e.num_errors >= 1,
          `${who}: num_errors ${e.num_errors}: the non-JSON request was not counted`,
        );
        assert.ok(e.num_errors <= e.num_requests, `${who}: more errors (${e.num_errors}) than requests`);
        assert.notEqual(e.last_error, "", `${who}: last_error is empty after an error`);
      }
    }
  });

  describe("with the real nats CLI", { skip: NATS_CLI_MISSING }, () => {
    const urls = () => ({ hub: mesh.hub.url, "site a": mesh.sites.a?.url, "site b": mesh.sites.b?.url });
    const rawInfo = () =>
      (replies.hub?.info ?? [])
        .map((r) => (r.check.ok ? (r.check.normalized as InfoReply) : undefined))
        .filter((v): v is InfoReply => !!v && v.name.startsWith("syncd-"));
    const described = (v: InfoReply) => ({
      name: v.name,
      id: v.id,
      version: v.version,
      metadata: v.metadata,
      description: v.description,
      endpoints: v.endpoints,
    });

    it("nats micro ls --json at every server lists every instance of every site as its INFO reply says, in schema after Go's decode", () => {
      const want = rawInfo()
        .map(described)
        .sort((x, y) => x.id.localeCompare(y.id));
      assert.equal(want.length, SITES.length * KINDS.length);
      for (const [server, url] of Object.entries(urls())) {
        const listed = natsJson<InfoReply[]>(["-s", url as string, "micro", "ls"]).filter((v) =>
          v.name.startsWith("syncd-"),
        );
        for (const v of listed)
          assert.equal(checkSchema("info", JSON.stringify(v)).ok, true, JSON.stringify(v));
        assert.deepEqual(
          listed.map(described).sort((x, y) => x.id.localeCompare(y.id)),
          want.filter((v) => reaches(server, v.metadata?.site)),
          server,
        );
      }
    });

    it("nats micro info <service> <id> --json describes each instance as its INFO reply does", () => {
      for (const v of rawInfo()) {
        const got = natsJson<{ info: InfoReply }>(["-s", mesh.hub.url, "micro", "info", v.name, v.id]).info;
        const check = checkSchema("info", JSON.stringify(got));
        assert.ok(check.ok, `${v.name} ${v.id}: ${JSON.stringify(check)}`);
        assert.deepEqual(described(got), described(v));
      }
    });

    it("nats micro stats <service> --json at every server has every instance, its endpoints and at least the counts its STATS reply had", () => {
      const raw = new Map<string, StatsReply>();
      for (const r of replies.hub?.stats ?? [])
        if (r.check.ok) raw.set((r.check.normalized as StatsReply).id, r.check.normalized as StatsReply);
      for (const [server, url] of Object.entries(urls()))
        for (const name of Object.values(ServiceName)) {
          const stats = natsJson<StatsReply[]>(["-s", url as string, "micro", "stats", name]);
          const n = SITES.filter((s) => reaches(server, s)).length;
          assert.equal(stats.length, n, `${server} ${name}: ${stats.length} instances`);
          for (const st of stats) {
            const check = checkSchema("stats", JSON.stringify(st));
            assert.ok(check.ok, `${server} ${name} ${st.id}: ${JSON.stringify(check)}`);
            const before = raw.get(st.id);
            assert.ok(before, `${server} ${name}: ${st.id} unknown to $SRV.STATS`);
            assert.deepEqual(
              st.endpoints.map((e) => `${e.name} ${e.subject}`),
              before.endpoints.map((e) => `${e.name} ${e.subject}`),
            );
            for (const [i, e] of st.endpoints.entries()) {
              const b = before.endpoints[i];
              assert.ok(e.num_requests >= (b?.num_requests ?? 0), `${name} ${e.name}: num_requests`);
              assert.ok(e.num_errors >= (b?.num_errors ?? 0), `${name} ${e.name}: num_errors`);
            }
          }
        }
    });

    it("nats micro refuses a reply that breaks the protocol, and lists the same reply well-formed", async () => {
      const nc = servers["site a"] as NatsConnection;
      const identity = { name: "rogue", id: "R0GUE0000000000000000A", version: "1.0.0", metadata: {} };
      const endpoint = { name: "e", subject: "rogue.e", queue_group: "q" };
      const base: Record<MicroKind, Record<string, unknown>> = {
        ping: { type: "io.nats.micro.v1.ping_response", ...identity },
        info: {
          type: "io.nats.micro.v1.info_response",
          ...identity,
          description: "",
          endpoints: [{ ...endpoint, metadata: {} }],
        },
        stats: {
          type: "io.nats.micro.v1.stats_response",
          ...identity,
          started: new Date().toISOString(),
          endpoints: [
            {
              ...endpoint,
              num_requests: 3,
              num_errors: 0,
              last_error: "",
              processing_time: 1500,
              average_processing_time: 500,
            },
          ],
        },
      };
      let mutate: (kind: MicroKind, reply: Record<string, unknown>) => Record<string, unknown> = (_k, r) => r;
      const sub = nc.subscribe("$SRV.>", {
        callback: (_err, m) => {
          const verb = m.subject.split(".")[1]?.toLowerCase() as MicroKind;
          if (!(verb in base) || (m.subject.split(".").length > 2 && m.subject.split(".")[2] !== "rogue"))
            return;
          m.respond(JSON.stringify(mutate(verb, structuredClone(base[verb]))));
        },
      });
      await nc.flush();
      try {
        const listedIn = (r: { code: number | null; stdout: string }) =>
          r.code === 0 &&
          ((JSON.parse(r.stdout) ?? []) as { id: string }[]).some((v) => v.id === identity.id);
        const seen = async () => {
          const ls = await natsAsync(["-s", mesh.sites.a?.url as string, "micro", "ls", "rogue", "--json"]);
          const st = await natsAsync([
            "-s",
            mesh.sites.a?.url as string,
            "micro",
            "stats",
            "rogue",
            "--json",
          ]);
          const [listed, counted] = [listedIn(ls), listedIn(st)];
          return { listed, counted, out: `${ls.stdout}${ls.stderr}${st.stdout}${st.stderr}` };
        };
        const good = await seen();
        assert.deepEqual([good.listed, good.counted], [true, true], `well-formed rogue: ${good.out}`);
        type R = Record<string, unknown>;
        const endpoint0 = (r: R, patch: R): R => ({
          ...r,
          endpoints: [{ ...(r.endpoints as R[])[0], ...patch }],
        });
        const broken: [string, MicroKind, (r: R) => R][] = [
          ["num_requests as a string", "stats", (r) => endpoint0(r, { num_requests: "3" })],
          ["a fractional processing_time", "stats", (r) => endpoint0(r, { processing_time: 1.5 })],
          ["no name", "info", ({ name: _, ...r }) => r],
          ["a started that is not a time", "stats", (r) => ({ ...r, started: "yesterday" })],
          ["the wrong type", "info", (r) => ({ ...r, type: "io.nats.micro.v1.ping_response" })],
        ];
        for (const [what, kind, breakIt] of broken) {
          mutate = (k, r) => (k === kind ? breakIt(r) : r);
          const got = await seen();
          assert.equal(
            kind === "info" ? got.listed : got.counted,
            false,
            `${what}: natscli took it\n${got.out}`,
          );
        }
      } finally {
        sub.unsubscribe();
      }
    });
  });
});
