/**
 * deploy/: the docker compose mesh, the image and the systemd units, checked without Docker or
 * systemd (neither runs here). The compose file is read with a small parser of the plain YAML it is
 * written in (no YAML library is installed; anything fancier fails here on purpose), the server
 * configs with a parser of the NATS config subset deploy/ uses, and everything is cross-checked:
 * mounted files exist and nats-server accepts them; the compose configs say what deploy/nats's
 * templates filled for the compose network say; published ports and health checks match the configs;
 * server names and domains are unique; every site has the four services, each pointed at its own
 * site's server; every variable set is a setting the services know; the image's runtime stage
 * (production dependencies only) has every package the services import; each service kind has a
 * systemd unit running it from the site's environment file.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { cpSync, mkdtempSync, rmSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, test } from "node:test";
import { SERVICE_KINDS } from "../scripts/lib/services.ts";
import { REPO_ROOT, findNatsServer, supportsLeafIsolation } from "../scripts/lib/topology.ts";
import { usage } from "../services/mod.ts";

const DEPLOY = path.join(REPO_ROOT, "deploy");
const read = (p: string) => readFileSync(path.join(REPO_ROOT, p), "utf8");

// ---------------------------------------------------------------------------------------------
// A parser of the YAML subset the compose file is written in: block mappings and sequences (nested
// deeper), plain, 'single' and "double" quoted scalars, one-line flow sequences, # comments.
// Scalars stay strings. Anything else (anchors, flow mappings, multi-line scalars, tabs) throws.
type Yaml = string | null | Yaml[] | { [k: string]: Yaml };
type YamlMap = { [k: string]: Yaml };

function stripComment(line: string): string {
  let q: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (q) {
      if (c === q) q = null;
      else if (c === "\\" && q === '"') i++;
    } else if (c === '"' || c === "'") q = c;
    else if (c === "#" && (i === 0 || line[i - 1] === " ")) return line.slice(0, i);
  }
  return line;
}

function yamlScalar(s: string, where: string): Yaml {
  const v = s.trim();
  if (v === "" || v === "~" || v === "null") return null;
  if (v.startsWith('"')) return JSON.parse(v) as string;
  if (v.startsWith("'")) {
    if (!v.endsWith("'") || v.length < 2) throw new Error(`${where}: unterminated '...'`);
    return v.slice(1, -1).replace(/''/g, "'");
  }
  if (v.startsWith("[")) {
    if (!v.endsWith("]")) throw new Error(`${where}: a flow sequence must end on its line`);
    const inner = v.slice(1, -1).trim();
    if (!inner) return [];
    const items: string[] = [];
    let q: string | null = null;
    let cur = "";
    for (let i = 0; i < inner.length; i++) {
      const c = inner[i] as string;
      if (q) {
        cur += c;
        if (c === "\\" && q === '"') cur += inner[++i] ?? "";
        else if (c === q) q = null;
      } else if (c === '"' || c === "'") {
        q = c;
        cur += c;
      } else if (c === ",") {
        items.push(cur);
        cur = "";
      } else cur += c;
    }
    items.push(cur);
    return items.map((x) => yamlScalar(x, where));
  }
  if (/^[{&*!|>]/.test(v)) throw new Error(`${where}: unsupported YAML (${v.slice(0, 20)})`);
  return v;
}

function parseYaml(text: string): Yaml {
  const lines: { n: number; indent: number; text: string }[] = [];
  text.split("\n").forEach((raw, i) => {
    if (/^\s*\t/.test(raw)) throw new Error(`line ${i + 1}: tab indentation`);
    const t = stripComment(raw).replace(/\s+$/, "");
    if (t.trim() === "") return;
    if (t.trim() === "---" || t.trim() === "...") throw new Error(`line ${i + 1}: one document only`);
    lines.push({ n: i + 1, indent: t.length - t.trimStart().length, text: t.trim() });
  });
  let pos = 0;
  const block = (indent: number): Yaml => {
    const first = lines[pos];
    if (!first || first.indent !== indent) throw new Error(`line ${first?.n}: bad indentation`);
    if (first.text === "-" || first.text.startsWith("- ")) {
      const seq: Yaml[] = [];
      while (pos < lines.length && (lines[pos] as { indent: number }).indent === indent) {
        const l = lines[pos] as { n: number; text: string };
        if (!(l.text === "-" || l.text.startsWith("- "))) throw new Error(`line ${l.n}: expected "- "`);
        const item = l.text.slice(1).trim();
        if (/^[A-Za-z0-9_.-]+:(\s|$)/.test(item))
          throw new Error(`line ${l.n}: mappings inside sequences are not in the subset`);
        seq.push(yamlScalar(item, `line ${l.n}`));
        pos++;
      }
      return seq;
    }
    const map: YamlMap = {};
    while (pos < lines.length && (lines[pos] as { indent: number }).indent === indent) {
      const l = lines[pos] as { n: number; text: string };
      const m = /^([A-Za-z0-9_.-]+):(?:\s+(.*))?$/.exec(l.text);
      if (!m) throw new Error(`line ${l.n}: expected "key: value", got ${l.text}`);
      const key = m[1] as string;
      if (key in map) throw new Error(`line ${l.n}: duplicate key ${key}`);
      pos++;
      const next = lines[pos];
      if (m[2] !== undefined && m[2] !== "") map[key] = yamlScalar(m[2], `line ${l.n}`);
      else if (next && next.indent > indent) map[key] = block(next.indent);
      else map[key] = null;
    }
    const after = lines[pos];
    if (after && after.indent > indent) throw new Error(`line ${after.n}: bad indentation`);
    return map;
  };
  const doc = block(0);
  if (pos !== lines.length) throw new Error(`line ${lines[pos]?.n}: unexpected content`);
  return doc;
}

// ---------------------------------------------------------------------------------------------
// A parser of the NATS server config subset used in deploy/: `key: value`, `key = value`,
// `key value`, `key { ... }`, `key [ ... ]`, quoted and bare values, # and // comments.
type Conf = string | Conf[] | { [k: string]: Conf };
type ConfMap = { [k: string]: Conf };

function parseNatsConf(text: string): ConfMap {
  let i = 0;
  const ws = () => {
    for (;;) {
      while (i < text.length && /[\s,;]/.test(text[i] as string)) i++;
      if (text[i] === "#" || (text[i] === "/" && text[i + 1] === "/")) {
        while (i < text.length && text[i] !== "\n") i++;
      } else return;
    }
  };
  const quoted = (): string => {
    const q = text[i++] as string;
    let out = "";
    while (i < text.length && text[i] !== q) {
      if (text[i] === "\\" && q === '"') i++;
      out += text[i++];
    }
    if (text[i] !== q) throw new Error("unterminated string");
    i++;
    return out;
  };
  const bare = (stop: RegExp): string => {
    let out = "";
    while (i < text.length && !stop.test(text[i] as string)) out += text[i++];
    return out.trim();
  };
  const value = (inArray: boolean): Conf => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      return map("}");
    }
    if (c === "[") {
      i++;
      const arr: Conf[] = [];
      for (;;) {
        ws();
        if (text[i] === "]") {
          i++;
          return arr;
        }
        if (i >= text.length) throw new Error("unterminated [");
        arr.push(value(true));
      }
    }
    if (c === '"' || c === "'") return quoted();
    const v = bare(inArray ? /[\n,\]#]/ : /[\n,;}#]/);
    if (!v) throw new Error(`empty value at ${i}`);
    return v;
  };
  const map = (end: string | null): ConfMap => {
    const out: ConfMap = {};
    for (;;) {
      ws();
      if (i >= text.length) {
        if (end) throw new Error(`missing ${end}`);
        return out;
      }
      if (end && text[i] === end) {
        i++;
        return out;
      }
      const key = text[i] === '"' ? quoted() : bare(/[\s:={[]/);
      if (!key) throw new Error(`expected a key at ${i}: ${text.slice(i, i + 20)}`);
      while (text[i] === " " || text[i] === "\t") i++;
      if (text[i] === ":" || text[i] === "=") i++;
      if (key in out) throw new Error(`duplicate key ${key}`);
      out[key] = value(false);
    }
  };
  return map(null);
}

const asMap = (c: Conf | Yaml | undefined, what: string): { [k: string]: Conf } => {
  assert.ok(c && typeof c === "object" && !Array.isArray(c), `${what} is a map`);
  return c as { [k: string]: Conf };
};
const asStr = (c: Conf | Yaml | undefined, what: string): string => {
  assert.equal(typeof c, "string", `${what} is a string (got ${JSON.stringify(c)})`);
  return c as string;
};
const asList = (c: Yaml | Conf | undefined, what: string): string[] => {
  assert.ok(Array.isArray(c), `${what} is a list (got ${JSON.stringify(c)})`);
  return (c as unknown[]).map((x, k) => asStr(x as Conf, `${what}[${k}]`));
};
const portOf = (hostPort: string): number => {
  const m = /:(\d+)$/.exec(hostPort);
  assert.ok(m, `${hostPort} has a port`);
  return Number(m[1]);
};

function fill(template: string, values: Record<string, string>): string {
  return template.replace(/\{\{([A-Z_]+)\}\}/g, (m, k: string) => {
    const v = values[k];
    if (v === undefined) throw new Error(`unknown placeholder ${m}`);
    return v;
  });
}

/** Every setting a service takes from its environment (services/lib/config.ts, via its usage text). */
const SERVICE_ENV = new Set([...usage("x").matchAll(/\[\$([A-Z_]+)\]/g)].map((m) => m[1] as string));

// ---------------------------------------------------------------------------------------------

const compose = asMap(parseYaml(read("deploy/docker-compose.yml")), "compose file");
const services = asMap(compose.services as Yaml, "services");
const svc = (name: string) => asMap(services[name] as Yaml, `service ${name}`);

/** A nats-server service: the config it runs with (host path) and that config, parsed. */
function serverOf(name: string): { file: string; conf: ConfMap } {
  const s = svc(name);
  const cmd = asList(s.command as Yaml, `${name}.command`);
  assert.equal(cmd[0], "nats-server", `${name} runs nats-server`);
  const at = cmd.findIndex((a) => a === "--config" || a === "-c");
  assert.ok(at >= 0 && cmd[at + 1], `${name} names its config`);
  const inContainer = cmd[at + 1] as string;
  const mount = asList(s.volumes as Yaml, `${name}.volumes`)
    .map((v) => v.split(":"))
    .find((p) => p[1] === inContainer);
  assert.ok(mount, `${name} mounts ${inContainer}`);
  assert.equal(mount[2], "ro", `${name} mounts its config read-only`);
  const file = path.resolve(DEPLOY, mount[0] as string);
  assert.ok(existsSync(file), `${file} exists`);
  return { file, conf: parseNatsConf(readFileSync(file, "utf8")) };
}

const SITE_SERVER = /^nats-([A-Za-z0-9_]+)$/;
const SYNCD_SERVICE = /^syncd-([A-Za-z0-9_]+)-([a-z]+)$/;
const serverNames = Object.keys(services).filter((n) => SITE_SERVER.test(n) && n !== "nats-hub");
const sites = serverNames.map((n) => (SITE_SERVER.exec(n) as RegExpExecArray)[1] as string);

describe("deploy/docker-compose.yml", () => {
  test("a hub, sites a and b, the four services of each site, and the CLI", () => {
    assert.equal(compose.name, "nats-kv-syncd");
    assert.ok(services["nats-hub"], "nats-hub");
    assert.deepEqual(sites, ["a", "b"]);
    const expected = [
      "nats-hub",
      ...sites.map((s) => `nats-${s}`),
      ...sites.flatMap((s) => [...SERVICE_KINDS, "agent"].map((k) => `syncd-${s}-${k}`)),
      "syncd",
    ].sort();
    assert.deepEqual(Object.keys(services).sort(), expected);
    for (const n of ["nats-hub", ...serverNames])
      assert.match(asStr(svc(n).image, `${n}.image`), /^nats:2\.(1\d|9)[.-]/, `${n} image`);
  });

  test("every mounted config exists, and nats-server accepts it", () => {
    let bin: string | undefined;
    try {
      bin = findNatsServer();
    } catch {
      bin = undefined;
    }
    // the hub's image is nats 2.12+ (it isolates leaf interest); an older local server checks the
    // same config with that one line commented out, in a copy
    const tmp = mkdtempSync(path.join(os.tmpdir(), "syncd-compose-"));
    try {
      for (const n of ["nats-hub", ...serverNames]) {
        let { file } = serverOf(n);
        if (!bin) continue;
        const text = readFileSync(file, "utf8");
        if (!supportsLeafIsolation(bin) && /^\s*isolate_leafnode_interest:/m.test(text)) {
          assert.equal(n, "nats-hub", `${n}: only the hub isolates leaf interest`);
          file = path.join(tmp, path.basename(file));
          writeFileSync(file, text.replace(/^(\s*)(isolate_leafnode_interest:)/m, "$1# $2"));
        }
        const r = spawnSync(bin, ["-t", "-c", file], { encoding: "utf8", timeout: 20_000 });
        assert.equal(r.status, 0, `nats-server -t -c ${file}: ${r.stdout}${r.stderr}`);
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  test("the compose configs are deploy/nats's hub.conf and site.conf.template filled for this network", () => {
    const hub = serverOf("nats-hub").conf;
    const hubTemplate = parseNatsConf(read("deploy/nats/hub.conf").replace(/127\.0\.0\.1:/g, "0.0.0.0:"));
    assert.deepEqual(hub, hubTemplate, "compose/hub.conf = deploy/nats/hub.conf listening on 0.0.0.0");
    const hubLeafPort = portOf(asStr(asMap(hub.leafnodes, "hub leafnodes").listen, "hub leaf listen"));
    for (const s of sites) {
      const { conf } = serverOf(`nats-${s}`);
      const client = portOf(asStr(conf.listen, "listen"));
      const http = portOf(asStr(conf.http, "http"));
      const filled = fill(read("deploy/nats/site.conf.template"), {
        SITE: s,
        HOST: "0.0.0.0",
        CLIENT_PORT: String(client),
        HTTP_PORT: String(http),
        STORE_DIR: "/data",
        HUB_LEAF_URL: `nats-leaf://nats-hub:${hubLeafPort}`,
      });
      assert.deepEqual(conf, parseNatsConf(filled), `compose/site-${s}.conf = site.conf.template filled`);
    }
  });

  test("site ports as the local mesh has them: a 4222, b 5222 (monitoring +1), hub 7222, leaf 7422", () => {
    const ports = (n: string) => {
      const c = serverOf(n).conf;
      return [portOf(asStr(c.listen, "listen")), portOf(asStr(c.http, "http"))];
    };
    assert.deepEqual(ports("nats-a"), [4222, 4223]);
    assert.deepEqual(ports("nats-b"), [5222, 5223]);
    assert.deepEqual(ports("nats-hub"), [7222, 7223]);
    const leaf = asMap(serverOf("nats-hub").conf.leafnodes, "leafnodes");
    assert.equal(portOf(asStr(leaf.listen, "leaf listen")), 7422);
  });

  test("published ports are the configs' listeners, on the host's loopback, same numbers; health checks probe the monitoring port", () => {
    for (const n of ["nats-hub", ...serverNames]) {
      const c = serverOf(n).conf;
      const listeners = [c.listen, c.http, (c.leafnodes as ConfMap | undefined)?.listen]
        .filter((x): x is string => typeof x === "string")
        .map(portOf);
      const published = asList(svc(n).ports as Yaml, `${n}.ports`).map((p) => {
        const m = /^127\.0\.0\.1:(\d+):(\d+)$/.exec(p);
        assert.ok(m, `${n}: port ${p} is published as 127.0.0.1:<host>:<container>`);
        assert.equal(m[1], m[2], `${n}: ${p} keeps the port number on the host`);
        return Number(m[2]);
      });
      for (const p of published) assert.ok(listeners.includes(p), `${n}: published ${p} is a listener`);
      // a site's client and monitoring ports are published; the hub's leaf port too
      for (const p of listeners) assert.ok(published.includes(p), `${n}: listener ${p} is published`);
      const hc = asList(asMap(svc(n).healthcheck as Yaml, `${n}.healthcheck`).test as Yaml, "test");
      const url = hc.find((a) => a.startsWith("http://"));
      assert.ok(url, `${n}: health check probes a URL`);
      assert.equal(new URL(url).port, String(portOf(asStr(c.http, "http"))), `${n}: health check port`);
      assert.equal(new URL(url).pathname, "/healthz");
    }
  });

  test("server names and JetStream domains are unique; each site's leaf remote is the hub's leaf listener and keeps rep.kv.ops local", () => {
    const hub = serverOf("nats-hub").conf;
    const hubLeafPort = portOf(asStr(asMap(hub.leafnodes, "leafnodes").listen, "leaf listen"));
    const names = [asStr(hub.server_name, "hub server_name")];
    // the hub runs JetStream in its own domain (the services' default --hub-domain) for SYNCD_HUB
    const hubJs = asMap(hub.jetstream, "the hub's jetstream block");
    const domains: string[] = [asStr(hubJs.domain, "the hub's JetStream domain")];
    assert.equal(hubJs.domain, "hub");
    for (const s of sites) {
      const c = serverOf(`nats-${s}`).conf;
      names.push(asStr(c.server_name, "server_name"));
      const js = asMap(c.jetstream, "jetstream");
      domains.push(asStr(js.domain, "domain"));
      assert.equal(js.domain, s, `site ${s}: domain = site name (the services' default)`);
      const remotes = asMap(c.leafnodes, "leafnodes").remotes as Conf[];
      assert.equal(remotes.length, 1);
      const r = asMap(remotes[0], "remote");
      const url = new URL(asStr(r.url, "remote url"));
      assert.equal(url.protocol, "nats-leaf:");
      assert.equal(url.hostname, "nats-hub", "the hub's compose service name");
      assert.equal(Number(url.port), hubLeafPort);
      assert.deepEqual(r.deny_exports, ["rep.kv.ops"]);
      assert.deepEqual(r.deny_imports, ["rep.kv.ops"]);
    }
    assert.equal(new Set(names).size, names.length, `server names unique: ${names}`);
    assert.equal(new Set(domains).size, domains.length, `domains unique: ${domains}`);
  });

  test("each site's JetStream store is a named volume of its own", () => {
    const volumes = asMap(compose.volumes as Yaml, "volumes");
    const used: string[] = [];
    for (const s of sites) {
      const { conf } = serverOf(`nats-${s}`);
      const store = asStr(asMap(conf.jetstream, "jetstream").store_dir, "store_dir");
      const mount = asList(svc(`nats-${s}`).volumes as Yaml, "volumes")
        .map((v) => v.split(":"))
        .find((p) => p[1] === store);
      assert.ok(mount, `nats-${s} mounts its store_dir ${store}`);
      assert.ok((mount[0] as string) in volumes, `${mount[0]} is a named volume`);
      used.push(mount[0] as string);
    }
    assert.equal(new Set(used).size, used.length, "one volume per site");
  });

  test("each syncd service runs one kind against its own site's server; every kind at every site", () => {
    const seen = new Set<string>();
    for (const [name, raw] of Object.entries(services)) {
      const m = SYNCD_SERVICE.exec(name);
      if (!m) continue;
      const [, site, kind] = m as unknown as [string, string, string];
      const s = asMap(raw as Yaml, name);
      assert.ok(sites.includes(site), `${name}: site ${site} has a server`);
      assert.ok([...SERVICE_KINDS, "agent"].includes(kind), `${name}: kind ${kind}`);
      seen.add(`${site}/${kind}`);
      // the agent (all four kinds in one process) only when named: never with the four by default
      if (kind === "agent") assert.deepEqual(asList(s.profiles as Yaml, `${name}.profiles`), ["agent"]);
      else assert.equal(s.profiles, undefined, `${name}: started by a plain up`);
      assert.deepEqual(asList(s.command as Yaml, `${name}.command`), ["node", "services/run.mjs", kind]);
      assert.ok(existsSync(path.join(REPO_ROOT, "services", kind, "main.ts")), `services/${kind}/main.ts`);
      const env = asMap(s.environment as Yaml, `${name}.environment`);
      assert.equal(env.SYNCD_SITE, site, `${name}: SYNCD_SITE`);
      const { conf } = serverOf(`nats-${site}`);
      assert.equal(
        env.NATS_URL,
        `nats://nats-${site}:${portOf(asStr(conf.listen, "listen"))}`,
        `${name}: NATS_URL is its site's server and client port`,
      );
      assert.equal(env.SYNCD_BUCKETS, "config");
      for (const k of Object.keys(env)) assert.ok(SERVICE_ENV.has(k), `${name}: ${k} is a service setting`);
      const dep = asMap(s.depends_on as Yaml, `${name}.depends_on`);
      assert.deepEqual(Object.keys(dep), [`nats-${site}`], `${name} depends on its site's server only`);
      assert.equal(asMap(dep[`nats-${site}`] as Yaml, "dep").condition, "service_healthy");
      assert.equal(s.restart, "unless-stopped");
    }
    for (const site of sites)
      for (const kind of [...SERVICE_KINDS, "agent"])
        assert.ok(seen.has(`${site}/${kind}`), `syncd-${site}-${kind}`);
  });

  test("one image for every syncd container and the CLI, built from deploy/Dockerfile", () => {
    for (const [name, raw] of Object.entries(services)) {
      if (!name.startsWith("syncd")) continue;
      const s = asMap(raw as Yaml, name);
      assert.equal(s.image, "nats-kv-syncd:local", `${name}.image`);
      const b = asMap(s.build as Yaml, `${name}.build`);
      assert.equal(path.resolve(DEPLOY, asStr(b.context, "context")), REPO_ROOT, `${name}: context = repo`);
      assert.ok(existsSync(path.join(REPO_ROOT, asStr(b.dockerfile, "dockerfile"))), `${name}: Dockerfile`);
    }
    const cli = svc("syncd");
    assert.deepEqual(asList(cli.profiles as Yaml, "profiles"), ["tools"]);
    assert.deepEqual(asList(cli.entrypoint as Yaml, "entrypoint"), ["node", "services/cli/syncd.mjs"]);
    assert.ok(existsSync(path.join(REPO_ROOT, "services/cli/syncd.mjs")));
    const env = asMap(cli.environment as Yaml, "syncd.environment");
    assert.match(asStr(env.NATS_URL, "NATS_URL"), /^nats:\/\/nats-a:4222$/);
  });

  test("`docker compose config` accepts the file (only where docker compose is installed)", (t) => {
    const v = spawnSync("docker", ["compose", "version"], { encoding: "utf8", timeout: 20_000 });
    if (v.status !== 0) {
      t.skip("docker compose is not installed");
      return;
    }
    const r = spawnSync(
      "docker",
      ["compose", "-f", path.join(DEPLOY, "docker-compose.yml"), "config", "-q"],
      {
        encoding: "utf8",
        timeout: 60_000,
      },
    );
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
  });
});

// ---------------------------------------------------------------------------------------------

/** The package names a source file imports at run time (not `import type`), bare specifiers only. */
function runtimeImports(src: string): string[] {
  const out = new Set<string>();
  const specs = [
    ...src.matchAll(/^\s*(?:import|export)\s+(?!type\s)[^"';]*?\bfrom\s+["']([^"']+)["']/gm),
    ...src.matchAll(/^\s*import\s+["']([^"']+)["']/gm),
    ...src.matchAll(/\bimport\(\s*["']([^"']+)["']\s*\)/g),
  ].map((m) => m[1] as string);
  for (const s of specs) {
    if (s.startsWith(".") || s.startsWith("node:") || s.startsWith("/")) continue;
    const parts = s.split("/");
    out.add(s.startsWith("@") ? `${parts[0]}/${parts[1]}` : (parts[0] as string));
  }
  return [...out];
}

function filesUnder(dir: string, exts: string[]): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir)) {
    const p = path.join(dir, e);
    if (statSync(p).isDirectory()) out.push(...filesUnder(p, exts));
    else if (exts.some((x) => e.endsWith(x))) out.push(p);
  }
  return out;
}

describe("deploy/Dockerfile", () => {
  const dockerfile = read("deploy/Dockerfile");
  const stages = dockerfile.split(/^FROM /m).slice(1);

  test("two node:20 stages; every COPY source exists; the runtime stage installs production dependencies only", () => {
    assert.equal(stages.length, 2);
    for (const st of stages) assert.match(st, /^node:20-slim\b/);
    for (const m of dockerfile.matchAll(/^COPY\s+(?!--from)(.+)$/gm)) {
      const args = (m[1] as string).trim().split(/\s+/);
      for (const src of args.slice(0, -1))
        assert.ok(existsSync(path.join(REPO_ROOT, src)), `COPY source ${src} exists`);
    }
    const runtime = stages[1] as string;
    assert.match(runtime, /npm ci --omit=dev/);
    assert.match(runtime, /COPY --from=build \/app\/dist dist/);
    assert.match(stages[0] as string, /node scripts\/build\.mjs/);
    // the CMD runs something that is in the image
    const cmd = /^CMD \[(.*)\]$/m.exec(dockerfile);
    assert.ok(cmd);
    const argv = JSON.parse(`[${cmd[1]}]`) as string[];
    assert.ok(existsSync(path.join(REPO_ROOT, argv[1] as string)), `CMD ${argv.join(" ")}`);
  });

  test("the runtime stage has every package the services and the CLI import", () => {
    const pkg = JSON.parse(read("package.json")) as {
      dependencies: Record<string, string>;
      devDependencies: Record<string, string>;
    };
    const files = filesUnder(path.join(REPO_ROOT, "services"), [".ts", ".mjs"]);
    assert.ok(files.length > 10);
    const missing: string[] = [];
    for (const f of files)
      for (const p of runtimeImports(readFileSync(f, "utf8")))
        if (!(p in pkg.dependencies) && !(p === "tsx" && f.endsWith("launch.mjs")))
          missing.push(`${path.relative(REPO_ROOT, f)}: ${p}`);
    assert.deepEqual(missing, [], "imported at run time but not a production dependency");
    // tsx only in a checkout (services/launch.mjs, development): the image and a release run dist/
    assert.ok(!("tsx" in pkg.dependencies) && "tsx" in pkg.devDependencies, "tsx is a dev dependency");
    // the helper itself finds imports
    assert.deepEqual(
      runtimeImports('import type { A } from "x";\nimport { b } from "@s/y/z";\nawait import("w/v");'),
      ["@s/y", "w"],
    );
  });

  test("the build context keeps out node_modules and the rest (Dockerfile.dockerignore)", () => {
    const ignore = read("deploy/Dockerfile.dockerignore")
      .split("\n")
      .filter((l) => l.trim() && !l.startsWith("#"));
    assert.equal(ignore[0], "*");
    for (const m of dockerfile.matchAll(/^COPY\s+(?!--from)(.+)$/gm))
      for (const src of (m[1] as string)
        .trim()
        .split(/\s+/)
        .slice(0, -1)
        .filter((s) => s !== "./"))
        assert.ok(
          ignore.some((l) => l === `!${src}` || l === `!${src}/`),
          `${src} is let into the context`,
        );
  });
});

// ---------------------------------------------------------------------------------------------

/** A systemd unit file: section → key → values (a key may repeat). */
function parseUnit(text: string): Record<string, Record<string, string[]>> {
  const out: Record<string, Record<string, string[]>> = {};
  let section: Record<string, string[]> | undefined;
  for (const raw of text.split("\n")) {
    const l = raw.trim();
    if (!l || l.startsWith("#") || l.startsWith(";")) continue;
    const s = /^\[(.+)\]$/.exec(l);
    if (s) {
      out[s[1] as string] ??= {};
      section = out[s[1] as string];
      continue;
    }
    const kv = /^([A-Za-z]+)=(.*)$/.exec(l);
    assert.ok(kv && section, `unit line: ${l}`);
    const key = kv[1] as string;
    section[key] = [...(section[key] ?? []), kv[2] as string];
  }
  return out;
}

describe("deploy/systemd", () => {
  const dir = path.join(DEPLOY, "systemd");
  const unit = (f: string) => parseUnit(readFileSync(path.join(dir, f), "utf8"));

  test("one template per service kind: runs services/run.mjs <kind> as user syncd from /etc/syncd/<instance>.env, Restart=always", () => {
    for (const kind of SERVICE_KINDS) {
      const u = unit(`syncd-${kind}@.service`);
      const s = u.Service ?? {};
      assert.deepEqual(s.ExecStart, [`/usr/bin/node services/run.mjs ${kind}`]);
      assert.deepEqual(s.WorkingDirectory, ["/opt/nats-kv-syncd"]);
      assert.deepEqual(s.EnvironmentFile, ["/etc/syncd/%i.env"]);
      assert.deepEqual(s.Restart, ["always"]);
      assert.deepEqual(s.User, ["syncd"]);
      assert.deepEqual(s.Group, ["syncd"]);
      for (const e of s.Environment ?? []) {
        const name = e.split("=")[0] as string;
        assert.ok(SERVICE_ENV.has(name) || name === "NODE_ENV", `${kind}: Environment ${name}`);
      }
      assert.deepEqual(u.Unit?.PartOf, ["syncd@%i.target"]);
      assert.deepEqual(u.Install?.WantedBy, ["syncd@%i.target"]);
    }
    assert.deepEqual(
      readdirSync(dir)
        .filter((f) => /^syncd-.*@\.service$/.test(f))
        .sort(),
      [...SERVICE_KINDS, "agent"].map((k) => `syncd-${k}@.service`).sort(),
    );
  });

  test("syncd-agent@ runs the four services of a site in one process, in place of syncd@.target", () => {
    const u = unit("syncd-agent@.service");
    const s = u.Service ?? {};
    assert.deepEqual(s.ExecStart, ["/usr/bin/node services/run.mjs agent"]);
    assert.deepEqual(s.EnvironmentFile, ["/etc/syncd/%i.env"]);
    assert.deepEqual(s.Restart, ["always"]);
    assert.deepEqual(s.User, ["syncd"]);
    assert.deepEqual(u.Unit?.Conflicts, ["syncd@%i.target"]);
    assert.deepEqual(u.Install?.WantedBy, ["multi-user.target"]);
    assert.ok(existsSync(path.join(REPO_ROOT, "services/agent/main.ts")));
  });

  test("syncd@.target wants the four services of a site; nats-site@ and nats-hub run nats-server with their configs", () => {
    const t = unit("syncd@.target");
    const wants = (t.Unit?.Wants ?? []).join(" ").split(/\s+/).sort();
    assert.deepEqual(wants, SERVICE_KINDS.map((k) => `syncd-${k}@%i.service`).sort());
    assert.deepEqual(t.Install?.WantedBy, ["multi-user.target"]);
    const site = unit("nats-site@.service").Service ?? {};
    assert.deepEqual(site.ExecStart, ["/usr/sbin/nats-server --config /etc/nats/site-%i.conf"]);
    assert.deepEqual(site.Restart, ["always"]);
    assert.deepEqual(site.StateDirectory, ["nats-site/%i"]);
    const hub = unit("nats-hub.service").Service ?? {};
    assert.deepEqual(hub.ExecStart, ["/usr/sbin/nats-server --config /etc/nats/hub.conf"]);
  });

  test("site.env.example sets NATS_URL, SYNCD_SITE and SYNCD_BUCKETS; every variable in it is a service setting; no inline comments", () => {
    const lines = readFileSync(path.join(dir, "site.env.example"), "utf8").split("\n");
    const set = new Map<string, string>();
    const mentioned: string[] = [];
    for (const l of lines) {
      const m = /^(#?)([A-Z][A-Z0-9_]*)=(.*)$/.exec(l);
      if (!m) continue;
      mentioned.push(m[2] as string);
      if (!m[1]) set.set(m[2] as string, m[3] as string);
      assert.doesNotMatch(m[3] as string, /\s#/, `${m[2]}: systemd keeps an inline comment in the value`);
    }
    assert.deepEqual([...set.keys()].sort(), ["NATS_URL", "SYNCD_BUCKETS", "SYNCD_SITE"]);
    for (const v of mentioned) assert.ok(SERVICE_ENV.has(v), `${v} is a service setting`);
    for (const v of [
      "NATS_CREDS",
      "NATS_USER",
      "NATS_PASSWORD",
      "NATS_TLS_CA",
      "NATS_TLS_CERT",
      "NATS_TLS_KEY",
    ])
      assert.ok(mentioned.includes(v), `the example mentions ${v}`);
  });

  test("systemd-analyze verify finds nothing to complain about (only where systemd-analyze is installed)", (t) => {
    const v = spawnSync("systemd-analyze", ["--version"], { encoding: "utf8", timeout: 10_000 });
    if (v.status !== 0) {
      t.skip("systemd-analyze is not installed");
      return;
    }
    const tmp = mkdtempSync(path.join(os.tmpdir(), "syncd-units-"));
    try {
      cpSync(dir, tmp, { recursive: true });
      const targets: string[] = ["nats-hub.service"];
      for (const f of readdirSync(dir).filter((x) => x.includes("@."))) {
        const inst = f.replace("@.", "@a.");
        symlinkSync(f, path.join(tmp, inst));
        targets.push(inst);
      }
      const r = spawnSync("systemd-analyze", ["verify", ...targets.map((f) => path.join(tmp, f))], {
        encoding: "utf8",
        timeout: 60_000,
        env: { ...process.env, SYSTEMD_UNIT_PATH: `${tmp}:` },
      });
      const ours = `${r.stdout}${r.stderr}`
        .split("\n")
        .filter((l) => l.includes(tmp) && /unknown|failed|invalid|ignoring|not/i.test(l));
      assert.deepEqual(ours, [], `systemd-analyze verify:\n${r.stdout}${r.stderr}`);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------------------------------------

describe("the parsers used above", () => {
  test("YAML subset: maps, lists, quotes, flow lists, comments; refuses what it does not know", () => {
    assert.deepEqual(
      parseYaml('a: 1 # c\nb:\n  - "x # y"\n  - \'it\'\'s\'\nc:\n  d: [ "p", q ]\n  e:\n# top\nf: "a:b"\n'),
      { a: "1", b: ["x # y", "it's"], c: { d: ["p", "q"], e: null }, f: "a:b" },
    );
    assert.throws(() => parseYaml("a: &x 1\n"), /unsupported/);
    assert.throws(() => parseYaml("a: {b: 1}\n"), /unsupported/);
    assert.throws(() => parseYaml("a:\n  - b: 1\n"), /mappings inside sequences/);
    assert.throws(() => parseYaml("a: 1\na: 2\n"), /duplicate/);
    assert.throws(() => parseYaml("a:\n    b: 1\n  c: 2\n"), /indentation/);
  });

  test("NATS config subset: separators, blocks, arrays, comments", () => {
    assert.deepEqual(
      parseNatsConf(
        'a: 1   # c\nb = "x y"\nc 0.0.0.0:4222\nd {\n  e: [ "p", q ]\n  f [\n    { g: "nats-leaf://h:1" }\n  ]\n}\n// x\n',
      ),
      { a: "1", b: "x y", c: "0.0.0.0:4222", d: { e: ["p", "q"], f: [{ g: "nats-leaf://h:1" }] } },
    );
    assert.throws(() => parseNatsConf("a {\n b: 1\n"), /missing \}/);
  });
});
