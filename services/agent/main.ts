/**
 * Entry point of the site agent: `node services/run.mjs agent --site a ...` runs syncd-clock,
 * syncd-watcher, syncd-merger and syncd-reconciler in this one process — still four micro services,
 * each discoverable with `nats micro ls` — sharing one NATS connection, the site handles and one
 * `_meta` cache per bucket. `--services clock,merger` (or SYNCD_SERVICES) runs only some of them.
 * More instances of any kind can run anywhere with `node services/run.mjs <kind>`. The agent is the
 * composition root: the one place that imports several services.
 */
import { clockService } from "../clock/service.ts";
import { type ServiceDef, runServices } from "../lib/runtime.ts";
import { AGENT_NAME, type ServiceKind } from "../lib/subjects.ts";
import { mergerService } from "../merger/service.ts";
import { reconcilerService } from "../reconciler/service.ts";
import { watcherService } from "../watcher/service.ts";

// clock first: the watcher and the merger call it as soon as they consume
const all: ServiceDef[] = [clockService, watcherService, mergerService, reconcilerService];

/** Take `--services a,b` (or `--services=a,b`) out of argv; the rest is the services' config. */
function takeServicesFlag(argv: string[]): string | undefined {
  const i = argv.findIndex((a) => a === "--services" || a.startsWith("--services="));
  if (i < 0) return undefined;
  const a = argv[i] as string;
  const v = a.includes("=") ? a.slice(a.indexOf("=") + 1) : argv[i + 1];
  argv.splice(i, a.includes("=") ? 1 : 2);
  return v ?? "";
}

const spec = takeServicesFlag(process.argv) ?? process.env.SYNCD_SERVICES;
let defs = all;
if (spec !== undefined && spec !== "") {
  const want = spec.split(",").map((k) => k.trim().replace(/^syncd-/, ""));
  const unknown = want.filter((k) => !all.some((d) => d.kind === k));
  if (unknown.length > 0 || want.length === 0) {
    console.error(
      `error: --services takes a comma-separated list of ${all.map((d) => d.kind).join(", ")}; got ${spec}`,
    );
    process.exit(2);
  }
  defs = all.filter((d) => want.includes(d.kind as ServiceKind));
}
await runServices(
  defs,
  AGENT_NAME,
  `\n  --services                 only these kinds in this process, comma separated (default: ${all.map((d) => d.kind).join(",")}) [$SYNCD_SERVICES]`,
);
