/**
 * deploy/k8s, offline (no cluster here): the NATS Helm values of a site and the services' manifests
 * agree with the code (flags/env of services/lib/config.ts, the ingress subject, the service kinds,
 * the package version) and with the rest of deploy/ (the site server template's leaf deny list, the
 * Dockerfile's http port).
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { parse, parseAllDocuments } from "yaml";
import { OPS_INGRESS, usage } from "../services/mod.ts";

const REPO = join(fileURLToPath(import.meta.url), "..", "..");
const read = (rel: string) => readFileSync(join(REPO, rel), "utf8");
const KINDS = ["clock", "watcher", "merger", "reconciler"];
const SERVICE_ENV = new Set([...usage("x").matchAll(/\[\$([A-Z_]+)\]/g)].map((m) => m[1] as string));

// biome-ignore lint/suspicious/noExplicitAny: parsed YAML, checked field by field
type Any = any;

const values = parse(read("deploy/k8s/nats-site-values.yaml")) as Any;
const docs = parseAllDocuments(read("deploy/k8s/syncd-site.yaml")).map((d) => {
  assert.deepEqual(d.errors, [], "syncd-site.yaml parses");
  return d.toJS() as Any;
});
const configMap = docs.find((d) => d.kind === "ConfigMap" && d.metadata.name === "syncd-site");
const deployments = docs.filter((d) => d.kind === "Deployment");

describe("deploy/k8s", () => {
  it("one Deployment per service kind, running services/run.mjs <kind> from the package-version image", () => {
    const pkg = JSON.parse(read("package.json")) as { version: string };
    assert.deepEqual(deployments.map((d) => d.metadata.name).sort(), KINDS.map((k) => `syncd-${k}`).sort());
    for (const d of deployments) {
      const kind = (d.metadata.name as string).slice("syncd-".length);
      const [c] = d.spec.template.spec.containers;
      assert.deepEqual(c.command, ["node", "services/run.mjs", kind]);
      assert.ok(existsSync(join(REPO, "services", kind, "main.ts")));
      assert.equal(c.image, `nats-kv-syncd:${pkg.version}`);
      assert.deepEqual(d.spec.selector.matchLabels, { "app.kubernetes.io/name": d.metadata.name });
      assert.equal(d.spec.template.metadata.labels["app.kubernetes.io/name"], d.metadata.name);
      assert.deepEqual(c.envFrom, [{ configMapRef: { name: "syncd-site" } }]);
      for (const e of c.env ?? []) assert.ok(SERVICE_ENV.has(e.name), `${d.metadata.name}: env ${e.name}`);
    }
  });

  it("every setting in the ConfigMap is a service setting; the http port, probes and scrape port agree", () => {
    assert.ok(configMap, "ConfigMap syncd-site");
    for (const k of Object.keys(configMap.data))
      assert.ok(SERVICE_ENV.has(k) || k === "LOG_LEVEL", `${k} is a service setting`);
    const port = Number(configMap.data.SYNCD_HTTP_PORT);
    assert.ok(port > 0);
    const dockerfile = read("deploy/Dockerfile");
    assert.match(dockerfile, new RegExp(`^ENV SYNCD_HTTP_PORT=${port}$`, "m"), "the image's default port");
    assert.match(dockerfile, new RegExp(`^EXPOSE ${port}$`, "m"));
    for (const d of deployments) {
      const [c] = d.spec.template.spec.containers;
      const http = c.ports.find((p: Any) => p.name === "http");
      assert.equal(http.containerPort, port, `${d.metadata.name}: containerPort`);
      assert.equal(d.spec.template.metadata.annotations["prometheus.io/port"], String(port));
      assert.equal(d.spec.template.metadata.annotations["prometheus.io/path"], "/metrics");
      assert.deepEqual(c.livenessProbe.httpGet, { path: "/healthz", port: "http" });
      assert.deepEqual(c.startupProbe.httpGet, { path: "/healthz", port: "http" });
      assert.deepEqual(c.readinessProbe.httpGet, { path: "/readyz", port: "http" });
    }
  });

  it("the services reach the chart's server; the credentials file is where the Secret is mounted", () => {
    const url = new URL(configMap.data.NATS_URL);
    assert.equal(url.hostname, "nats", "the chart's Service (release name nats)");
    assert.equal(Number(url.port), values.config.nats.port);
    const creds = configMap.data.NATS_CREDS as string;
    for (const d of deployments) {
      const spec = d.spec.template.spec;
      const mount = spec.containers[0].volumeMounts.find((m: Any) => creds.startsWith(`${m.mountPath}/`));
      assert.ok(mount, `${d.metadata.name} mounts ${creds}`);
      const vol = spec.volumes.find((v: Any) => v.name === mount.name);
      assert.equal(vol.secret.secretName, "syncd-creds");
    }
  });

  it("the Helm values: JetStream with the site's domain, 3 servers, a leaf remote with credentials and the rep.kv.ops deny", () => {
    assert.equal(values.config.jetstream.enabled, true);
    assert.equal(values.config.cluster.enabled, true);
    assert.equal(values.config.cluster.replicas, 3);
    assert.equal(
      values.config.merge.jetstream.domain,
      configMap.data.SYNCD_SITE,
      "domain = site (syncd's default)",
    );
    const [remote] = values.config.merge.leafnodes.remotes;
    assert.match(remote.url, /^nats-leaf:\/\//);
    assert.deepEqual(remote.deny_exports, [OPS_INGRESS]);
    assert.deepEqual(remote.deny_imports, [OPS_INGRESS]);
    // the same deny as the plain server template
    const template = read("deploy/nats/site.conf.template");
    assert.match(template, new RegExp(`deny_exports: \\["${OPS_INGRESS.replaceAll(".", "\\.")}"\\]`));
    assert.match(template, new RegExp(`deny_imports: \\["${OPS_INGRESS.replaceAll(".", "\\.")}"\\]`));
    // the credentials file is in the Secret mounted into the nats container
    const mount = values.container.patch.find((p: Any) => p.path === "/volumeMounts/-").value;
    assert.ok((remote.credentials as string).startsWith(`${mount.mountPath}/`));
    const vol = values.podTemplate.patch.find((p: Any) => p.path === "/spec/volumes/-").value;
    assert.equal(vol.name, mount.name);
    assert.ok(vol.secret.secretName);
  });
});
