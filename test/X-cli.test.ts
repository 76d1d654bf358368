/**
 * The `syncd` CLI against a real hub + two leaf sites with all four services: run as a child process
 * (`node --import tsx services/cli/main.ts …`), its output parsed (--json, and the table of
 * `micro ls`). micro ls/info/stats, status, put → get at both sites, diff of a difference made behind
 * the services' back (and of equal buckets), reconcile repairing it, conflicts from the merger's
 * conflict log; exit codes 2 (usage) and 1 (error, one line, no stack trace).
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { before, describe, it } from "node:test";
import { type JetStreamClient, jetstream } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import { REPO_ROOT } from "../scripts/lib/topology.ts";
import {
  OPS_INGRESS,
  ServiceName,
  UsageError,
  VersionTree,
  descend,
  descendMany,
  differingKeys,
  endpointSubject,
  metaBucket,
  parseCli,
  parseDuration,
  table,
  treeSource,
} from "../services/mod.ts";
import { type Mesh, eventually } from "./harness/mesh.ts";
import { call, plantVersion, quiet, runSyncdCli as runCli, withLinkedMesh, withMesh } from "./helpers.ts";

const BUCKET = "config";
const SITES = ["a", "b"] as const;
type Site = (typeof SITES)[number];

describe("syncd CLI pieces", () => {
  const tree = (entries: [string, number, string, boolean?][]) => {
    const t = new VersionTree();
    for (const [key, ts, node_id, deleted] of entries) t.set(key, { ts, node_id, deleted: deleted ?? false });
    return t;
  };

  it("descendMany over two sites finds what the reconciler's descend finds; over three, every difference", async () => {
    const base: [string, number, string][] = [];
    for (let i = 0; i < 3000; i++) base.push([`k${i}`, 100 + i, "site-a"]);
    const a = tree(base);
    const b = tree(base);
    const c = tree(base);
    assert.deepEqual(await descendMany([treeSource(a), treeSource(b), treeSource(c)], a.depth), {
      list: [],
      ranges: 0,
    });
    b.set("k7", { ts: 999_999, node_id: "site-b", deleted: false });
    b.delete("k2000");
    b.set("new.b", { ts: 5, node_id: "site-b", deleted: true });
    c.set("k1234", { ts: 100 + 1234, node_id: "site-a", deleted: true });
    const two = await descendMany([treeSource(a), treeSource(b)], a.depth);
    const ref = await descend(a, treeSource(b));
    assert.deepEqual(two.list.sort(), ref.list.sort());
    assert.equal(two.ranges, ref.ranges);
    const three = await descendMany([treeSource(a), treeSource(b), treeSource(c)], a.depth);
    const listed = new Set(
      [...a.entries(three.list), ...b.entries(three.list), ...c.entries(three.list)].map((e) => e.key),
    );
    for (const k of ["k7", "k2000", "new.b", "k1234"]) assert.ok(listed.has(k), k);
    assert.ok(listed.size < 200, `listed ${listed.size} of 3000 keys`);
    const { diffs } = differingKeys(
      new Map([
        ["a", [...a.entries(three.list)]],
        ["b", [...b.entries(three.list)]],
        ["c", [...c.entries(three.list)]],
      ]),
    );
    assert.deepEqual(
      diffs.map((d) => [d.key, d.newest.join(",")]),
      [
        ["k1234", "c"],
        ["k2000", "a,c"],
        ["k7", "b"],
        ["new.b", "b"],
      ],
    );
    assert.equal(diffs.find((d) => d.key === "new.b")?.sites.a, null);
  });

  it("tables align columns, numbers to the right; flags and durations parse like nats", () => {
    assert.equal(
      table(
        ["NAME", "N", "NOTE"],
        [
          ["a", 1, undefined],
          ["bbb", 100, "x"],
        ],
      ),
      "NAME  N    NOTE\na       1  -\nbbb   100  x",
    );
    assert.equal(parseDuration("5s"), 5000);
    assert.equal(parseDuration("250ms"), 250);
    assert.equal(parseDuration("2"), 2000);
    assert.equal(parseDuration("1m"), 60_000);
    assert.throws(() => parseDuration("soon"), UsageError);
    const cli = parseCli(["get", "config", "k", "--json", "--site", "a", "--timeout", "2s"], {
      NATS_URL: "nats://h1:4222,nats://h2:4222",
      NATS_USER: "u",
    });
    assert.deepEqual([cli.command, cli.args, cli.json, cli.site], ["get", ["config", "k"], true, "a"]);
    assert.deepEqual(cli.conn.servers, ["nats://h1:4222", "nats://h2:4222"]);
    assert.equal(cli.conn.user, "u");
    assert.equal(cli.conn.timeoutMs, 2000);
    assert.throws(() => parseCli(["status", "--nope"], {}), UsageError);
    assert.throws(() => parseCli(["status", "--site", "a.b"], {}), UsageError);
  });
});

describe("syncd CLI on a two-site mesh", () => {
  const { mesh, nc } = withLinkedMesh({
    sites: [...SITES],
    scale: { clock: 1, watcher: 1, merger: 1, reconciler: 1 },
    serviceArgs: ["--reconcile-interval", "0"],
  }) as { mesh: Mesh; nc: Record<Site, NatsConnection> };
  let server: string;
  const js = {} as Record<Site, JetStreamClient>;
  const meta = {} as Record<Site, KV>;

  /** Run the CLI against site a's server. */
  const syncd = (...args: string[]) => runCli([...args, "--server", server]);
  /** Run it with --json, expect exit code 0, and parse what it printed. */
  const json = async <T>(...args: string[]): Promise<T> => {
    const r = await syncd(...args, "--json");
    assert.equal(r.code, 0, `syncd ${args.join(" ")} exited ${r.code}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  };

  before(async () => {
    server = mesh.sites.a!.url;
    for (const s of SITES) {
      js[s] = jetstream(nc[s]);
      meta[s] = await new Kvm(nc[s]).open(metaBucket(BUCKET));
    }
  });

  it("usage errors exit 2, other errors exit 1 with one line and no stack trace", async () => {
    const [help, bogus, missing, refused, shim] = await Promise.all([
      runCli(["--help"]),
      runCli(["bogus"]),
      runCli(["get", BUCKET]),
      runCli(["status", "--server", "nats://127.0.0.1:1", "--timeout", "1s"]),
      runCli(["--version"], { entry: [path.join(REPO_ROOT, "services/cli/syncd.mjs")] }),
    ]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /^usage: syncd/);
    assert.equal(bogus.code, 2);
    assert.match(bogus.stderr, /unknown command "bogus"/);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /usage: syncd get <bucket> <key>/);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /^syncd: error: cannot connect to nats:\/\/127\.0\.0\.1:1/);
    assert.equal(refused.stderr.trim().split("\n").length, 1, refused.stderr);
    assert.doesNotMatch(refused.stderr, /\n\s+at /);
    // the bin shim registers tsx itself
    const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, "package.json"), "utf8")) as { version: string };
    assert.equal(shim.code, 0, shim.stderr);
    assert.equal(shim.stdout.trim(), pkg.version);
  });

  it("micro ls lists the 8 instances (JSON and table); info and stats show endpoints", async () => {
    type Row = { name: string; id: string; version: string; site: string; description: string };
    const rows = await eventually(
      async () => {
        const r = await json<Row[]>("micro", "ls");
        assert.equal(r.length, 8, JSON.stringify(r));
        return r;
      },
      { timeout: 15_000, interval: 200 },
    );
    const kinds = Object.values(ServiceName) as string[];
    for (const s of SITES)
      assert.deepEqual(
        rows
          .filter((r) => r.site === s)
          .map((r) => r.name)
          .sort(),
        [...kinds].sort(),
      );
    assert.equal(new Set(rows.map((r) => r.id)).size, 8);
    if (mesh.topology.hub.isolate) {
      // the hub isolates leaf interest (the default on 2.12+): a client at a does not reach b's
      // endpoints directly; the CLI, connected to a, found them through the hub relay
      const direct = await nc
        .a!.request(endpointSubject("b", "clock", "now"), "{}", { timeout: 2000 })
        .then(() => "answered", String);
      assert.match(direct, /no responders/i, "site a reaches b directly: the hub does not isolate");
    }

    // the table for people: a header, one aligned row per instance, a count
    const t = await syncd("micro", "ls");
    assert.equal(t.code, 0, t.stderr);
    const lines = t.stdout.trimEnd().split("\n");
    const header = lines[0]!;
    assert.match(header, /^NAME\s+ID\s+VERSION\s+SITE\s+DESCRIPTION$/);
    const body = lines.slice(1, lines.indexOf(""));
    assert.equal(body.length, 8, t.stdout);
    const col = (name: string) => header.indexOf(name);
    const parsed = body.map((l) => ({
      name: l.slice(0, col("ID")).trim(),
      id: l.slice(col("ID"), col("VERSION")).trim(),
      site: l.slice(col("SITE"), col("DESCRIPTION")).trim(),
    }));
    assert.deepEqual(
      parsed.map((p) => `${p.name}@${p.site}#${p.id}`).sort(),
      rows.map((r) => `${r.name}@${r.site}#${r.id}`).sort(),
    );
    assert.equal(lines.at(-1), "8 instances");

    type Info = {
      name: string;
      metadata: Record<string, string>;
      endpoints: { name: string; subject: string; queue_group: string; metadata: Record<string, string> }[];
    };
    const infos = await json<Info[]>("micro", "info", ServiceName.merger);
    assert.deepEqual(infos.map((i) => i.metadata.site).sort(), ["a", "b"]);
    for (const i of infos) {
      const get = i.endpoints.find((e) => e.name === "get");
      assert.equal(get?.subject, endpointSubject(i.metadata.site!, "merger", "get"));
      assert.equal(get?.queue_group, "syncd");
      assert.equal(get?.metadata["schema.request"], "schemas/merger/get.request.json");
    }

    await call(nc.a, "a", "clock", "now");
    type Stats = {
      name: string;
      metadata: Record<string, string>;
      endpoints: { name: string; num_requests: number; num_errors: number; processing_time: number }[];
    };
    const stats = await json<Stats[]>("micro", "stats", ServiceName.clock);
    const now = stats.find((s) => s.metadata.site === "a")?.endpoints.find((e) => e.name === "now");
    assert.ok(now && now.num_requests >= 1, JSON.stringify(stats));
    assert.equal(typeof now.processing_time, "number");
  });

  it("status shows both sites with their 4 services, clock, watcher, merger, reconciler, streams", async () => {
    type Status = {
      sites: {
        site: string;
        domain: string;
        services: Record<string, number>;
        clock: { ts: number; mode: string } | null;
        watcher: { buckets: { bucket: string; position: number; lag: number }[] } | null;
        merger: { pending: number; counts: Record<string, number> } | null;
        reconciler: { peers: string[] } | null;
        dead_letters: number | null;
        conflicts: number | null;
        caught_up: boolean | null;
        sourced: { hub: { caughtUp: boolean } | null; feed: { caughtUp: boolean } | null };
        errors: string[];
      }[];
    };
    // the hub holds each site's last op and each FEED the hub's last (not the servers' lag alone)
    await eventually(async () => {
      const c = await json<Status>("status");
      assert.deepEqual(
        c.sites.map((s) => [s.site, s.caught_up, s.sourced.hub?.caughtUp, s.sourced.feed?.caughtUp]),
        [
          ["a", true, true, true],
          ["b", true, true, true],
        ],
      );
    });
    const st = await json<Status>("status");
    assert.deepEqual(
      st.sites.map((s) => s.site),
      ["a", "b"],
    );
    for (const s of st.sites) {
      assert.deepEqual(s.errors, [], `${s.site}: ${s.errors.join("; ")}`);
      assert.equal(s.domain, s.site);
      assert.deepEqual(s.services, {
        "syncd-clock": 1,
        "syncd-watcher": 1,
        "syncd-merger": 1,
        "syncd-reconciler": 1,
      });
      assert.equal(s.clock?.mode, "hlc");
      assert.deepEqual(
        s.watcher?.buckets.map((b) => b.bucket),
        [BUCKET],
      );
      assert.equal(typeof s.merger?.pending, "number");
      assert.ok(s.reconciler, "reconciler status");
      assert.equal(typeof s.dead_letters, "number");
      assert.equal(typeof s.conflicts, "number");
    }
  });

  type KeyAt = { site: string; state: string; value?: string; ts?: number; node_id?: string };
  type Get = { bucket: string; key: string; differ: boolean; newest: string[]; sites: KeyAt[] };

  it("put at a, then get shows the value at both sites; del at b deletes it everywhere", async () => {
    const put = await json<{ site: string; revision: number }>(
      "put",
      BUCKET,
      "cli.k",
      "hello",
      "--site",
      "a",
    );
    assert.equal(put.site, "a");
    assert.ok(put.revision > 0);
    const g = await eventually(
      async () => {
        const r = await json<Get>("get", BUCKET, "cli.k");
        assert.deepEqual(
          r.sites.map((s) => [s.site, s.state, s.value, s.node_id]),
          [
            ["a", "live", "hello", "site-a"],
            ["b", "live", "hello", "site-a"],
          ],
        );
        return r;
      },
      { timeout: 15_000, interval: 100 },
    );
    assert.equal(g.differ, false);

    const del = await syncd("del", BUCKET, "cli.k", "--site", "b");
    assert.equal(del.code, 0, del.stderr);
    await eventually(
      async () => {
        const r = await json<Get>("get", BUCKET, "cli.k");
        assert.deepEqual(
          r.sites.map((s) => [s.site, s.state, s.node_id]),
          [
            ["a", "deleted", "site-b"],
            ["b", "deleted", "site-b"],
          ],
        );
      },
      { timeout: 15_000, interval: 100 },
    );
    const absent = await json<Get>("get", BUCKET, "cli.never");
    assert.deepEqual(
      absent.sites.map((s) => s.state),
      ["absent", "absent"],
    );
    // put needs --site when there are several sites
    const ambiguous = await syncd("put", BUCKET, "cli.k", "x");
    assert.equal(ambiguous.code, 2);
  });

  type SiteVersion = { ts: number; node_id: string; deleted: boolean; value?: string } | null;
  type Diff = {
    sites: string[];
    ranges_descended: number;
    differences: { key: string; newest: string[]; sites: Record<string, SiteVersion> }[];
  };

  it("diff: nothing for equal buckets; a difference made behind the services' back; reconcile repairs it", async () => {
    for (let i = 0; i < 30; i++) await (await mesh.kv(i % 2 ? "a" : "b")).put(`seed.${i % 10}`, `v${i}`);
    await quiet({ a: nc.a, b: nc.b });
    await eventually(
      async () => {
        const d = await json<Diff>("diff", BUCKET);
        assert.deepEqual(d.sites, ["a", "b"]);
        assert.deepEqual(d.differences, []);
      },
      { timeout: 15_000, interval: 200 },
    );

    // at b only, with version headers (no op is published) and its _meta version
    const now = Date.now() * 1000;
    const plant = async (key: string, value: string, ts: number) => {
      await plantVersion(nc.b, { key, value, ts, node_id: "site-b", legacy: true });
    };
    await plant("cli.oob", "only at b", now + 1);
    await plant("seed.1", "newer at b", now + 2);
    const d = await eventually(
      async () => {
        const r = await json<Diff>("diff", BUCKET);
        assert.deepEqual(
          r.differences.map((k) => k.key),
          ["cli.oob", "seed.1"],
        );
        return r;
      },
      { timeout: 15_000, interval: 200 },
    );
    assert.ok(d.ranges_descended >= 1);
    const [oob, seed1] = d.differences;
    assert.equal(oob?.sites.a, null);
    assert.deepEqual(oob?.sites.b, { ts: now + 1, node_id: "site-b", deleted: false, value: "only at b" });
    assert.deepEqual(oob?.newest, ["b"]);
    assert.equal(seed1?.sites.b?.value, "newer at b");
    assert.ok(seed1?.sites.a && seed1.sites.a.ts < now + 2);
    assert.deepEqual(seed1?.newest, ["b"]);

    type Runs = { runs: { site: string; peer: string; pulled: number; pushed: number; error?: string }[] };
    const r = await json<Runs>("reconcile", "--site", "a");
    assert.equal(r.runs.length, 1, JSON.stringify(r));
    const run = r.runs[0]!;
    assert.deepEqual([run.site, run.peer, run.pulled, run.pushed, run.error], ["a", "b", 2, 0, undefined]);

    const g = await json<Get>("get", BUCKET, "cli.oob");
    assert.deepEqual(
      g.sites.map((s) => [s.site, s.value]),
      [
        ["a", "only at b"],
        ["b", "only at b"],
      ],
    );
    await eventually(
      async () => {
        const after = await json<Diff>("diff", BUCKET);
        assert.deepEqual(after.differences, []);
      },
      { timeout: 10_000, interval: 200 },
    );
  });

  it("conflicts lists the merger's conflict records, filtered by bucket, key and site", async () => {
    type Conflicts = {
      records: {
        site: string;
        bucket: string;
        key: string;
        kind: string;
        loser: { ts: number; node_id: string; value?: string };
        winner: { node_id: string };
      }[];
      sites: { site: string; exists: boolean }[];
    };
    await json("put", BUCKET, "cli.c", "current", "--site", "a");
    for (const site of SITES) {
      await eventually(async () => {
        const r = await call<{ node_id: string }>(nc[site], site, "merger", "get", {
          bucket: BUCKET,
          key: "cli.c",
        });
        assert.equal(r.node_id, "site-a");
      });
    }
    // a hand-made op older than what the sites hold, sent at both sites (a losing op is not forwarded):
    // it loses at each, and each records the conflict
    const stale = { op: "put", bucket: BUCKET, key: "cli.c", value: "too late", ts: 1, node_id: "operator" };
    for (const site of ["a", "b"] as const) {
      nc[site].publish(OPS_INGRESS, JSON.stringify(stale));
      await nc[site].flush();
    }
    const all = await eventually(
      async () => {
        const r = await json<Conflicts>("conflicts", BUCKET, "cli.c");
        assert.deepEqual([...new Set(r.records.map((c) => c.site))].sort(), ["a", "b"], JSON.stringify(r));
        return r.records;
      },
      { timeout: 15_000, interval: 200 },
    );
    for (const c of all) {
      assert.deepEqual(
        [c.bucket, c.key, c.kind, c.loser.node_id, c.loser.ts, c.loser.value, c.winner.node_id],
        [BUCKET, "cli.c", "stale_op", "operator", 1, "too late", "site-a"],
      );
    }
    const atB = await json<Conflicts>("conflicts", BUCKET, "cli.c", "--site", "b");
    assert.ok(atB.records.length >= 1);
    assert.ok(atB.records.every((c) => c.site === "b"));
    assert.deepEqual(
      atB.sites.map((s) => s.site),
      ["b"],
    );
    // --limit keeps the newest
    const one = await json<Conflicts>("conflicts", BUCKET, "--limit", "1");
    assert.equal(one.records.length, 1);
    const otherBucket = await json<Conflicts>("conflicts", "nosuchbucket");
    assert.deepEqual(otherBucket.records, []);
  });
});

describe("syncd CLI with NATS auth (deploy/nats/site-users.conf.template)", () => {
  const users = { syncd: "syncd-secret", app: "app-secret", admin: "admin-secret" };
  const { mesh } = withMesh({ sites: ["a"], services: false, users });
  before(async () => {
    await mesh.kv("a");
  });

  it("--user/--password (or $NATS_USER/$NATS_PASSWORD) pass through; a refused login is exit 1", async () => {
    const server = mesh.sites.a!.url;
    const put = await runCli([
      "put",
      BUCKET,
      "auth.k",
      "v",
      "--site",
      "a",
      "--server",
      server,
      "--user",
      "admin",
      "--password",
      users.admin,
      "--json",
    ]);
    assert.equal(put.code, 0, put.stderr);
    assert.equal((JSON.parse(put.stdout) as { revision: number }).revision, 1);
    assert.equal((await (await mesh.kv("a")).get("auth.k"))?.string(), "v");

    const [wrong, none] = await Promise.all([
      runCli(["micro", "ls", "--server", server, "--user", "admin", "--password", "nope"]),
      runCli(["micro", "ls", "--server", server]),
    ]);
    for (const r of [wrong, none]) {
      assert.equal(r.code, 1, r.stdout);
      assert.match(r.stderr, /^syncd: error: cannot connect to .*authorization/i);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    }
  });
});
