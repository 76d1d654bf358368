/**
 * Where the `syncd` CLI and the real `nats` CLI overlap — `micro ls`, `micro info`, `micro stats`,
 * the connection flags (`--server`, `--user`, `--password`) and their environment variables
 * (`NATS_URL`, `NATS_USER`, `NATS_PASSWORD`), and one natscli context (made with the real
 * `nats context add` in a temp XDG_CONFIG_HOME; `--context`, `NATS_CONTEXT`, the selected context) —
 * both run against one mesh (sites requiring auth, as the `app` user) and must agree — except that
 * when the hub isolates leaf interest (the default on 2.12+) `nats` at a site lists that site's
 * instances only, while `syncd` lists every site's through the hub relay. Skips without the nats
 * CLI (no Go).
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { REPO_ROOT } from "../scripts/lib/topology.ts";
import { ServiceName } from "../services/mod.ts";
import { type Mesh, startMesh } from "./harness/mesh.ts";
import { type CliResult, NATS_CLI, NATS_CLI_MISSING, cliEnv } from "./natscli.ts";

const SITES = ["a", "b"];
const USERS = { syncd: "syncd-pw", app: "app-pw", admin: "admin-pw" };

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env: cliEnv(env), encoding: "utf8", timeout: 60_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === "number" ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}
const syncd = (args: string[], env?: NodeJS.ProcessEnv) =>
  run(process.execPath, [path.join(REPO_ROOT, "services/cli/syncd.mjs"), ...args], env);
const nats = (args: string[], env?: NodeJS.ProcessEnv) => run(NATS_CLI as string, args, env);

function json<T>(r: CliResult, what: string): T {
  assert.equal(r.code, 0, `${what}: exit ${r.code}\n${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout) as T;
}

type Instance = { name: string; id: string; version: string; metadata: Record<string, string> };
type Endpoint = {
  name: string;
  subject: string;
  queue_group: string;
  num_requests: number;
  num_errors: number;
  data: Record<string, unknown> | null;
};
type Stats = Instance & { endpoints: Endpoint[] };
type Info = Instance & {
  description: string;
  endpoints: Omit<Endpoint, "num_requests" | "num_errors" | "data">[];
};

const identity = (i: Instance) => ({ name: i.name, id: i.id, version: i.version, metadata: i.metadata });
const byId = <T extends { id: string }>(xs: T[]) => [...xs].sort((a, b) => a.id.localeCompare(b.id));

describe("syncd and nats agree on one mesh", { skip: NATS_CLI_MISSING }, () => {
  let mesh: Mesh;
  const login = (site: string) => [
    "--server",
    mesh.sites[site]?.url as string,
    "--user",
    "app",
    "--password",
    USERS.app,
  ];

  // what nats lists at a site: every site's instances, or that site's only when the hub isolates
  // leaf interest; syncd lists every site's either way (through the hub relay)
  const atSite = <T extends Instance>(xs: T[], site: string): T[] =>
    mesh.topology.hub.isolate ? xs.filter((i) => i.metadata.site === site) : xs;

  before(async () => {
    mesh = await startMesh({ sites: SITES, users: USERS });
  });
  after(async () => {
    await mesh?.stop();
  });

  it("micro ls --json: the same instances (name, id, version, metadata) at every site, every service of every site", async () => {
    for (const site of SITES) {
      const [ours, theirs] = await Promise.all([
        syncd([...login(site), "micro", "ls", "--json"]).then((r) => json<Instance[]>(r, "syncd micro ls")),
        nats([...login(site), "micro", "ls", "--json"]).then((r) => json<Instance[]>(r, "nats micro ls")),
      ]);
      assert.deepEqual(byId(atSite(ours, site)).map(identity), byId(theirs).map(identity), `at site ${site}`);
      for (const name of Object.values(ServiceName))
        assert.equal(ours.filter((i) => i.name === name).length, SITES.length, `${name} at site ${site}`);
    }
  });

  it("micro info <service> <id> --json: the same description and endpoints", async () => {
    const list = json<Instance[]>(await nats([...login("a"), "micro", "ls", "--json"]), "nats micro ls");
    for (const i of list) {
      const [ours] = json<Info[]>(
        await syncd([...login("a"), "micro", "info", i.name, i.id, "--json"]),
        "syncd",
      );
      const theirs = json<{ info: Info }>(
        await nats([...login("a"), "micro", "info", i.name, i.id, "--json"]),
        "nats",
      ).info;
      assert.ok(ours, `syncd micro info ${i.name} ${i.id}`);
      const shape = (x: Info) => ({
        ...identity(x),
        description: x.description,
        endpoints: x.endpoints.map((e) => ({ name: e.name, subject: e.subject, queue_group: e.queue_group })),
      });
      assert.deepEqual(shape(ours), shape(theirs));
    }
  });

  it("micro stats <service> --json: the same instances and endpoints, the same data fields, counts between two syncd readings", async () => {
    for (const name of Object.values(ServiceName)) {
      const stats = (r: CliResult, what: string) => new Map(json<Stats[]>(r, what).map((s) => [s.id, s]));
      const first = stats(
        await syncd([...login("b"), "micro", "stats", name, "--json"]),
        `syncd micro stats ${name}`,
      );
      const middle = stats(
        await nats([...login("b"), "micro", "stats", name, "--json"]),
        `nats micro stats ${name}`,
      );
      const last = stats(
        await syncd([...login("b"), "micro", "stats", name, "--json"]),
        `syncd micro stats ${name}`,
      );
      assert.deepEqual(
        [...middle.keys()].sort(),
        atSite([...first.values()], "b")
          .map((s) => s.id)
          .sort(),
        `${name}: instances`,
      );
      assert.equal(first.size, SITES.length);
      for (const [id, n] of middle) {
        const [s1, s2] = [first.get(id), last.get(id)] as [Stats, Stats];
        assert.deepEqual(identity(n), identity(s1));
        assert.deepEqual(
          n.endpoints.map((e) => [e.name, e.subject, e.queue_group, Object.keys(e.data ?? {}).sort()]),
          s1.endpoints.map((e) => [e.name, e.subject, e.queue_group, Object.keys(e.data ?? {}).sort()]),
          `${name} ${id}: endpoints`,
        );
        for (const [k, e] of n.endpoints.entries())
          for (const f of ["num_requests", "num_errors"] as const) {
            const [lo, hi] = [s1.endpoints[k]?.[f] ?? -1, s2.endpoints[k]?.[f] ?? -1];
            assert.ok(
              lo <= e[f] && e[f] <= hi,
              `${name} ${id} ${e.name} ${f}: syncd ${lo}, nats ${e[f]}, syncd ${hi}`,
            );
          }
      }
    }
  });

  it("NATS_URL / NATS_USER / NATS_PASSWORD instead of flags: both connect the same way, and both refuse a wrong password", async () => {
    const env = { NATS_URL: mesh.sites.a?.url as string, NATS_USER: "app", NATS_PASSWORD: USERS.app };
    const [ours, theirs] = await Promise.all([
      syncd(["micro", "ls", "--json"], env).then((r) => json<Instance[]>(r, "syncd with env")),
      nats(["micro", "ls", "--json"], env).then((r) => json<Instance[]>(r, "nats with env")),
    ]);
    assert.deepEqual(
      byId(atSite(ours, "a")).map((i) => i.id),
      byId(theirs).map((i) => i.id),
    );
    assert.equal(ours.length, SITES.length * Object.keys(ServiceName).length);
    const wrong = { ...env, NATS_PASSWORD: "wrong" };
    const [badOurs, badTheirs] = await Promise.all([
      syncd(["micro", "ls", "--json", "--timeout", "3s"], wrong),
      nats(["micro", "ls", "--json", "--timeout", "3s"], wrong),
    ]);
    assert.notEqual(badOurs.code, 0, `syncd with a wrong password: ${badOurs.stdout}`);
    assert.notEqual(badTheirs.code, 0, `nats with a wrong password: ${badTheirs.stdout}`);
    assert.match(`${badOurs.stderr}`, /authoriz/i);
    assert.match(`${badTheirs.stderr}`, /authoriz/i);
  });

  it("one natscli context made by `nats context add`: --context, NATS_CONTEXT and the selected context connect both the same way", async () => {
    const home = mkdtempSync(path.join(tmpdir(), "syncd-ctx-"));
    try {
      const cfg = { XDG_CONFIG_HOME: home };
      const add = await nats(
        [
          "context",
          "add",
          "meshb",
          "--server",
          mesh.sites.b?.url as string,
          "--user",
          "app",
          "--password",
          USERS.app,
        ],
        cfg,
      );
      assert.equal(add.code, 0, `nats context add: ${add.stderr}${add.stdout}`);
      const wrong = await nats(
        [
          "context",
          "add",
          "wrongpw",
          "--server",
          mesh.sites.b?.url as string,
          "--user",
          "app",
          "--password",
          "nope",
        ],
        cfg,
      );
      assert.equal(wrong.code, 0, `nats context add: ${wrong.stderr}${wrong.stdout}`);
      const both = async (args: string[], env: NodeJS.ProcessEnv) => {
        const [ours, theirs] = await Promise.all([
          syncd([...args, "micro", "ls", "--json"], env).then((r) =>
            json<Instance[]>(r, `syncd ${args.join(" ")}`),
          ),
          nats([...args, "micro", "ls", "--json"], env).then((r) =>
            json<Instance[]>(r, `nats ${args.join(" ")}`),
          ),
        ]);
        assert.deepEqual(
          byId(atSite(ours, "b")).map(identity),
          byId(theirs).map(identity),
          `with ${args.join(" ") || "env"}`,
        );
        assert.equal(ours.length, SITES.length * Object.keys(ServiceName).length);
      };
      await both(["--context", "meshb"], cfg);
      await both([], { ...cfg, NATS_CONTEXT: "meshb" });
      const sel = await nats(["context", "select", "meshb"], cfg);
      assert.equal(sel.code, 0, `nats context select: ${sel.stderr}${sel.stdout}`);
      await both([], cfg);
      // the context's password is what both use: a context with a wrong one is refused by both
      const [badOurs, badTheirs] = await Promise.all([
        syncd(["--context", "wrongpw", "micro", "ls", "--json", "--timeout", "3s"], cfg),
        nats(["--context", "wrongpw", "micro", "ls", "--json", "--timeout", "3s"], cfg),
      ]);
      assert.notEqual(badOurs.code, 0, `syncd with context wrongpw: ${badOurs.stdout}`);
      assert.notEqual(badTheirs.code, 0, `nats with context wrongpw: ${badTheirs.stdout}`);
      assert.match(`${badOurs.stderr}`, /authoriz/i);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
