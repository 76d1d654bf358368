/**
 * The docs are executable: every `nats …` command in a fenced sh block of README.md and deploy/*.md
 * runs verbatim — in a terminal (`script`), through a shell, with the real natscli — against a mesh
 * started by ./scripts/up.sh (SECURE=1 for the blocks that use `--tlsca`), and its output is checked.
 * The commands are read from the docs, not copied here: a doc command that stops working, or a new
 * kind of command without a check below, fails a test. The blocks run in doc order, with the
 * partition/outage scripts (`./scripts/hub.sh`, `server.sh`, `site.sh`) and `sleep`s they contain;
 * other lines (up.sh, npx syncd, …) are left to their own tests.
 *
 * What is mapped, and only that: the docs' fixed ports (sites 4222 + 1000·i, hub 7222) to the test
 * mesh's ports, and `.mesh/` to its MESH_DIR. `nats` on the PATH is a wrapper that records the argv
 * it got (after the shell expanded `$(…)`) and runs the real CLI.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { freePort, freePortBlock, sleep } from "../scripts/lib/proc.ts";
import { REPO_ROOT } from "../scripts/lib/topology.ts";
import { OPS_INGRESS, ServiceName } from "../services/mod.ts";
import { until } from "./helpers.ts";
import { NATS_CLI, NATS_CLI_MISSING, cliEnv } from "./natscli.ts";

const DOCS = [
  "README.md",
  ...readdirSync(path.join(REPO_ROOT, "deploy"))
    .filter((f) => f.endsWith(".md"))
    .map((f) => `deploy/${f}`),
];
const DOC_SITE_PORT = 4222;
const DOC_SITE_STEP = 1000;
const DOC_HUB_PORT = 7222;

/** One line of a shell block: its code (continuations joined) and its trailing comment. */
type DocLine = { file: string; line: number; code: string; comment: string };
type DocBlock = { file: string; line: number; lines: DocLine[] };

/** Split a shell line at its comment: the first `#` outside quotes that starts a word. */
function splitComment(line: string): { code: string; comment: string } {
  let quote: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote) {
      if (c === quote) quote = null;
      else if (c === "\\" && quote === '"') i++;
    } else if (c === "'" || c === '"') quote = c;
    else if (c === "\\") i++;
    else if (c === "#" && (i === 0 || /\s/.test(line[i - 1] ?? ""))) {
      return { code: line.slice(0, i).trimEnd(), comment: line.slice(i + 1).trim() };
    }
  }
  return { code: line.trimEnd(), comment: "" };
}

/** The fenced sh/bash/shell blocks of a markdown text, with backslash continuations joined. */
function shellBlocks(file: string, text: string): DocBlock[] {
  const blocks: DocBlock[] = [];
  let current: DocBlock | undefined;
  let pending: DocLine | undefined;
  text.split("\n").forEach((raw, i) => {
    const fence = /^```(\w*)\s*$/.exec(raw);
    if (fence) {
      if (current) {
        blocks.push(current);
        current = undefined;
      } else if (["sh", "bash", "shell", "console"].includes(fence[1] ?? "")) {
        current = { file, line: i + 1, lines: [] };
      } else current = undefined;
      return;
    }
    if (!current) return;
    const { code, comment } = splitComment(raw);
    const continued = code.endsWith("\\");
    const part = continued ? code.slice(0, -1).trimEnd() : code.trim();
    if (pending) {
      pending.code = `${pending.code} ${part.trim()}`;
      if (comment) pending.comment = comment;
    } else pending = { file, line: i + 1, code: part, comment };
    if (!continued) {
      if (pending.code) current.lines.push(pending);
      pending = undefined;
    }
  });
  return blocks;
}

const isNats = (l: DocLine) => /^nats\s/.test(l.code);
/** Lines of a block the test runs besides the nats commands: the rehearsal scripts and sleeps. */
const isStep = (l: DocLine) =>
  /^\.\/scripts\/(hub|server|site)\.sh\s/.test(l.code) || /^sleep\s+\d+$/.test(l.code);

/** The blocks with `nats` commands of every doc, in doc order (README first). */
function docBlocks(): DocBlock[] {
  return DOCS.flatMap((f) => shellBlocks(f, readFileSync(path.join(REPO_ROOT, f), "utf8"))).filter((b) =>
    b.lines.some(isNats),
  );
}

/** The docs' fixed ports and `.mesh/` mapped to a test mesh. */
function mapToMesh(
  code: string,
  m: { hub: number; siteBase: number; siteStep: number; dir: string },
): string {
  return code
    .replace(/127\.0\.0\.1:(\d+)/g, (all, p: string) => {
      const port = Number(p);
      if (port === DOC_HUB_PORT) return `127.0.0.1:${m.hub}`;
      const i = (port - DOC_SITE_PORT) / DOC_SITE_STEP;
      if (Number.isInteger(i) && i >= 0 && i < 10) return `127.0.0.1:${m.siteBase + i * m.siteStep}`;
      throw new Error(`no mapping for the port in ${all}`);
    })
    .replace(/(^|[\s"'=])\.mesh\//g, `$1${m.dir}/`);
}

/** The non-option words of a nats argv (global flags with values dropped), and its own flags. */
function words(argv: string[]): { args: string[]; flags: string[] } {
  const withValue = new Set([
    "-s",
    "--server",
    "--user",
    "--password",
    "--tlsca",
    "--tlscert",
    "--tlskey",
    "--creds",
    "--timeout",
    "--context",
  ]);
  const args: string[] = [];
  const flags: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (withValue.has(a)) i++;
    else if (a.startsWith("-")) {
      if (!/^--(server|user|password|tlsca|tlscert|tlskey|creds|timeout|context)=/.test(a)) flags.push(a);
    } else args.push(a);
  }
  return { args, flags };
}

/** Every JSON value in a text that holds one or more, one after the other. */
function jsonValues(text: string): unknown[] {
  const out: unknown[] = [];
  let depth = 0;
  let start = -1;
  let quote = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === "\\") i++;
      else if (c === '"') quote = false;
    } else if (c === '"') quote = depth > 0;
    else if (c === "{" || c === "[") {
      if (depth++ === 0) start = i;
    } else if ((c === "}" || c === "]") && depth > 0 && --depth === 0)
      out.push(JSON.parse(text.slice(start, i + 1)));
  }
  return out;
}

type Run = { cmd: DocLine; mapped: string; code: number | null; out: string; argv: string[] };
type State = {
  sites: string[];
  values: Map<string, string | null>;
  lost: Set<string>;
  /** the hub isolates leaf interest (mesh.json): natscli at a site sees that site's instances only */
  isolated?: boolean;
  hubPort?: number;
};

/** How many instances of a service `nats micro` lists with these flags: every site's, or one site's at a site of an isolated hub. */
function listed(flags: string[], s: State): number {
  const atHub = s.hubPort !== undefined && flags.some((f) => f.endsWith(`:${s.hubPort}`));
  return s.isolated && !atHub ? 1 : s.sites.length;
}
type Check = {
  /** what the command is, for the failure message */
  what: string;
  match: (args: string[], flags: string[]) => boolean;
  /** re-run until the check passes (replication takes a moment) */
  eventually?: boolean;
  check: (r: Run, args: string[], flags: string[], s: State) => void | Promise<void>;
};

/**
 * The data rows of a natscli table (one per instance id, 22 characters), blank cells filled from the
 * row above (natscli leaves a repeated name or version blank).
 */
function tableRows(out: string): string[][] {
  const rows: string[][] = [];
  let prev: string[] = [];
  for (const line of out.split("\n")) {
    const cells = line
      .split("│")
      .slice(1, -1)
      .map((c) => c.trim());
    if (!cells.some((c) => /^[A-Za-z0-9]{22}$/.test(c))) continue;
    prev = cells.map((c, i) => c || (prev[i] ?? ""));
    rows.push(prev);
  }
  return rows;
}

const lastLine = (out: string) => out.trim().split("\n").at(-1)?.trim() ?? "";
const ok = (r: Run) => assert.equal(r.code, 0, `exit ${r.code}:\n${r.out}`);

/** One check per kind of nats command the docs show; a command no check matches fails. */
const CHECKS: Check[] = [
  {
    what: "kv put <bucket> <key> <value>: prints the value",
    match: (a) => a[0] === "kv" && a[1] === "put" && a.length === 5,
    check: (r, a, _f, s) => {
      ok(r);
      assert.equal(lastLine(r.out), a[4]);
      const prev = s.values.get(a[3] as string);
      if (prev) s.lost.add(prev);
      s.values.set(a[3] as string, a[4] as string);
    },
  },
  {
    what: "kv get <bucket> <key>: the value the docs' writes so far leave (and the → value of its comment)",
    match: (a) => a[0] === "kv" && a[1] === "get" && a.length === 4,
    eventually: true,
    check: (r, a, _f, s) => {
      ok(r);
      const want = s.values.get(a[3] as string);
      assert.ok(want, `the docs read ${a[3]} before writing it`);
      assert.equal(lastLine(r.out), want);
      const arrow = /^→\s*(\S+)/.exec(r.cmd.comment);
      if (arrow) assert.equal(lastLine(r.out), arrow[1], "the value the comment promises");
    },
  },
  {
    what: "micro ls: every instance of the four services of every site",
    match: (a) => a[0] === "micro" && a[1] === "ls" && a.length === 2,
    eventually: true,
    check: (r, _a, flags, s) => {
      ok(r);
      const names = flags.includes("--json")
        ? (JSON.parse(r.out) as { name: string }[]).map((x) => x.name)
        : tableRows(r.out).map((row) => row[0] ?? "");
      for (const name of Object.values(ServiceName)) {
        const n = names.filter((x) => x === name).length;
        assert.equal(n, listed(flags, s), `${name}: ${n} instances listed, ${s.sites.length} sites`);
      }
    },
  },
  {
    what: "micro info <service>: one instance with its endpoints on syncd.<site>.<kind>.<name>",
    match: (a) => a[0] === "micro" && a[1] === "info" && a.length === 3,
    check: (r, a) => {
      ok(r);
      const name = a[2] as string;
      assert.match(r.out, new RegExp(`Service: ${name} \\(`));
      const kind = name.replace(/^syncd-/, "");
      assert.match(r.out, new RegExp(`Subject: syncd\\.[\\w-]+\\.${kind}\\.\\w+`));
      assert.match(r.out, /Queue Group: syncd/);
    },
  },
  {
    what: "micro stats <service>: one row group per instance, every site",
    match: (a, f) => a[0] === "micro" && a[1] === "stats" && a.length === 3 && !f.includes("--json"),
    check: (r, a, f, s) => {
      ok(r);
      assert.match(r.out, new RegExp(`${a[2]} Service Statistics`));
      const ids = new Set([...r.out.matchAll(/│ ([A-Za-z0-9]{22}) │/g)].map((m) => m[1]));
      assert.equal(ids.size, listed(f, s), `instances in:\n${r.out}`);
    },
  },
  {
    what: "micro stats syncd-merger --json | jq '… merge … .data': the merger's counts, per instance",
    match: (a, f) => a[0] === "micro" && a[1] === "stats" && a[2] === "syncd-merger" && f.includes("--json"),
    check: (r, _a, f, s) => {
      ok(r);
      assert.match(r.cmd.code, /\|\s*jq /, "the docs pipe it to jq");
      const data = jsonValues(r.out) as Record<string, number>[];
      assert.equal(data.length, listed(f, s), r.out);
      for (const d of data)
        for (const k of ["applied", "stale", "duplicate", "dead_lettered"])
          assert.equal(typeof d[k], "number", `${k} in ${JSON.stringify(d)}`);
      assert.ok(data.reduce((n, d) => n + (d.applied ?? 0), 0) > 0, "ops were applied");
    },
  },
  {
    what: "req syncd.<site>.merger.get {bucket,key}: the value and version the docs' writes leave",
    match: (a) => a[0] === "req" && /^syncd\.[\w-]+\.merger\.get$/.test(a[1] ?? ""),
    eventually: true,
    check: (r, a, _f, s) => {
      ok(r);
      const req = JSON.parse(a[2] as string) as { key: string };
      const [reply] = jsonValues(r.out) as {
        value?: string;
        ts?: number;
        node_id?: string;
        deleted?: boolean;
      }[];
      assert.ok(reply, r.out);
      assert.equal(reply.value, s.values.get(req.key));
      assert.ok(Number.isSafeInteger(reply.ts) && typeof reply.node_id === "string", JSON.stringify(reply));
    },
  },
  {
    what: "req syncd.<site>.reconciler.run {}: a run against every peer",
    match: (a) => a[0] === "req" && /^syncd\.[\w-]+\.reconciler\.run$/.test(a[1] ?? ""),
    check: (r, a, _f, s) => {
      ok(r);
      const site = (a[1] as string).split(".")[1];
      const [reply] = jsonValues(r.out) as { runs?: { peer: string; keys_compared: number }[] }[];
      assert.ok(reply?.runs, r.out);
      assert.deepEqual(
        [...new Set(reply.runs.map((x) => x.peer))].sort(),
        s.sites.filter((x) => x !== site),
      );
    },
  },
  {
    what: "req syncd.<site>.clock.now '': an HLC reading near the wall clock",
    match: (a) => a[0] === "req" && /^syncd\.[\w-]+\.clock\.now$/.test(a[1] ?? ""),
    check: (r) => {
      ok(r);
      const [reply] = jsonValues(r.out) as { ts: number; mode: string; physical_ms: number }[];
      assert.ok(reply && Number.isSafeInteger(reply.ts), r.out);
      assert.equal(reply.mode, "hlc");
      assert.ok(Math.abs(reply.physical_ms - Date.now()) < 60_000, `physical_ms ${reply.physical_ms}`);
    },
  },
  {
    what: "pub rep.kv.ops <op>: the hand-made op reaches every site",
    match: (a) => a[0] === "pub" && a[1] === "rep.kv.ops" && a.length === 3,
    check: (r, a, _f, s) => {
      ok(r);
      const op = JSON.parse(a[2] as string) as { op: string; key: string; value?: string };
      const prev = s.values.get(op.key);
      if (prev) s.lost.add(prev);
      s.values.set(op.key, op.op === "put" ? (op.value ?? "") : null);
    },
  },
  {
    what: "stream view <SYNCD_DLQ_<site>|SYNCD_CONFLICTS_<site>>: the dead letters with their code, the losing writes",
    match: (a) => a[0] === "stream" && a[1] === "view" && a.length === 3,
    check: (r, a, _f, s) => {
      ok(r);
      if (/DLQ/.test(a[2] as string)) assert.match(r.out, /Syncd-Code: SYNCD_ERR_NOT_JSON/);
      else {
        assert.match(r.out, /^\[1\] Subject: /m);
        const lost = [...s.lost].filter((v) => r.out.includes(v));
        assert.ok(lost.length > 0, `none of the overwritten values ${[...s.lost]} in:\n${r.out}`);
      }
    },
  },
];

/** Replace `nats` on the PATH by a wrapper that writes its argv (NUL-separated) and runs the CLI. */
function wrapperDir(tmp: string, argvDir: string): string {
  const bin = path.join(tmp, "bin");
  mkdirSync(bin, { recursive: true });
  writeFileSync(
    path.join(bin, "nats"),
    `#!/usr/bin/env bash\nprintf '%s\\0' "$@" > "$(mktemp "${argvDir}/argv.XXXXXX")"\nexec "${NATS_CLI}" "$@"\n`,
  );
  chmodSync(path.join(bin, "nats"), 0o755);
  return bin;
}

describe("the docs' nats commands", () => {
  it("are found: every fenced sh block with a nats command, continuations joined, comments apart", () => {
    const blocks = docBlocks();
    const cmds = blocks.flatMap((b) => b.lines.filter(isNats));
    const kinds = new Set(cmds.map((c) => words(c.code.split(/\s+/).slice(1)).args.slice(0, 2).join(" ")));
    for (const k of [
      "kv put",
      "kv get",
      "micro ls",
      "micro info",
      "micro stats",
      "pub rep.kv.ops",
      "stream view",
    ])
      assert.ok(kinds.has(k), `no "nats ${k}" found in ${DOCS.join(", ")}: ${[...kinds].join(", ")}`);
    assert.ok(
      cmds.some((c) => c.code.includes("--tlsca")),
      "the secured mesh's commands",
    );
    const joined = shellBlocks("x.md", '```sh\nnats pub a \\\n  \'{"x":"#1"}\'   # c\n```\n');
    assert.deepEqual(
      joined[0]?.lines.map((l) => [l.code, l.comment]),
      [[`nats pub a '{"x":"#1"}'`, "c"]],
    );
  });

  for (const secure of [false, true]) {
    const blocks = docBlocks().filter(
      (b) => b.lines.some((l) => isNats(l) && l.code.includes("--tlsca")) === secure,
    );
    describe(
      secure ? "on the secured mesh (SECURE=1 ./scripts/up.sh)" : "on the mesh of ./scripts/up.sh",
      { skip: NATS_CLI_MISSING },
      () => {
        const tmp = mkdtempSync(path.join(os.tmpdir(), "syncd-docs-"));
        const dir = path.join(tmp, "mesh");
        const argvDir = path.join(tmp, "argv");
        mkdirSync(argvDir);
        let env: NodeJS.ProcessEnv = {};
        let ports = { hub: 0, siteBase: 0, siteStep: 10, dir };
        const state: State = { sites: ["a", "b"], values: new Map(), lost: new Set() };
        const script = (name: string) =>
          spawnSync(path.join(REPO_ROOT, "scripts", name), [], {
            cwd: REPO_ROOT,
            env,
            encoding: "utf8",
            timeout: 180_000,
          });

        before(async () => {
          ports = { ...ports, hub: await freePort(), siteBase: await freePortBlock(20) };
          env = cliEnv({
            PATH: `${wrapperDir(tmp, argvDir)}:${process.env.PATH}`,
            SHELL: "/bin/bash",
            MESH_DIR: dir,
            SITES: state.sites.join(" "),
            HUB_PORT: String(ports.hub),
            HUB_HTTP_PORT: String(await freePort()),
            HUB_LEAF_PORT: String(await freePort()),
            SITE_BASE_PORT: String(ports.siteBase),
            SITE_PORT_STEP: String(ports.siteStep),
            SECURE: secure ? "1" : "0",
          });
          const up = script("up.sh");
          assert.equal(up.status, 0, `up.sh: ${up.stdout}${up.stderr}`);
          const meshJson = JSON.parse(readFileSync(path.join(dir, "mesh.json"), "utf8"));
          state.isolated = meshJson.hub.isolated === true;
          state.hubPort = ports.hub;
          if (!secure) {
            // something for the dead-letter stream the docs view: one bad hand-made op
            const nc = await connect({ servers: `127.0.0.1:${ports.siteBase}` });
            nc.publish(OPS_INGRESS, "not json");
            await nc.flush();
            await nc.close();
          }
        });
        after(() => {
          script("down.sh");
          if (process.env.KEEP_MESH === "1") console.error(`KEEP_MESH=1: kept ${tmp}`);
          else rmSync(tmp, { recursive: true, force: true });
        });

        /** Run one doc line verbatim (mapped) in a terminal; the nats argv it produced. */
        const runLine = (cmd: DocLine): Run => {
          for (const f of readdirSync(argvDir)) rmSync(path.join(argvDir, f));
          const mapped = mapToMesh(cmd.code, ports);
          const r = spawnSync("script", ["-qec", mapped, "/dev/null"], {
            cwd: REPO_ROOT,
            env,
            encoding: "utf8",
            input: "",
            timeout: 180_000,
          });
          // biome-ignore lint/suspicious/noControlCharactersInRegex: terminal escapes
          const out = `${r.stdout}${r.stderr}`.replace(/\r/g, "").replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "");
          const calls = readdirSync(argvDir).map((f) =>
            readFileSync(path.join(argvDir, f), "utf8").split("\0").slice(0, -1),
          );
          return { cmd, mapped, code: r.status, out, argv: calls[0] ?? [] };
        };

        for (const block of blocks) {
          it(`${block.file}:${block.line}: ${block.lines.filter(isNats).length} nats commands, run in order, output checked`, async () => {
            for (const line of block.lines) {
              const where = `${line.file}:${line.line}: ${line.code}`;
              if (isStep(line)) {
                const r = runLine(line);
                assert.equal(r.code, 0, `${where}\n${r.out}`);
                continue;
              }
              if (!isNats(line)) continue;
              const first = runLine(line);
              assert.equal(
                first.argv[0] !== undefined || first.code !== 0,
                true,
                `${where}: nats was not run`,
              );
              const { args, flags } = words(first.argv);
              const check = CHECKS.find((c) => c.match(args, flags));
              assert.ok(check, `${where}: no check for this kind of nats command (add one to CHECKS)`);
              let r = first;
              const deadline = Date.now() + 30_000;
              for (;;) {
                try {
                  await check.check(r, args, flags, state);
                  break;
                } catch (e) {
                  if (!check.eventually || Date.now() > deadline)
                    throw new Error(
                      `${where}\n  (${check.what})\n  ${(e as Error).message}\n  output:\n${r.out}`,
                    );
                  await sleep(500);
                  r = runLine(line); // replication takes a moment
                }
              }
            }
            if (!secure) {
              // every hand-made op and write of the block has reached every site
              for (const [i, site] of state.sites.entries()) {
                const nc = await connect({ servers: `127.0.0.1:${ports.siteBase + i * ports.siteStep}` });
                try {
                  const kv = await new Kvm(nc).open("config");
                  await until(async () => {
                    for (const [key, value] of state.values) {
                      const e = await kv.get(key);
                      assert.equal(
                        e?.operation === "PUT" ? e.string() : null,
                        value,
                        `${key} at site ${site}`,
                      );
                    }
                    return true;
                  });
                } finally {
                  await nc.close();
                }
              }
            }
          });
        }
      },
    );
  }
});
