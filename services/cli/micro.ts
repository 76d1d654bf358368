/**
 * `syncd micro ls|info|stats [name] [id]`: what `nats micro ls|info|stats` shows, from
 * `$SRV.INFO|STATS[.name[.id]]` replies collected for about a second or until quiet.
 */
import { CliError, UsageError } from "./args.ts";
import type { Ctx, Output } from "./context.ts";
import { type MicroInfo, type MicroStats, discover } from "./nats.ts";
import { clip, nanosText, table } from "./table.ts";

/** One row of `micro ls`. */
export type MicroLsRow = {
  name: string;
  id: string;
  version: string;
  site: string | null;
  description: string;
  metadata: Record<string, string>;
};

const SYNOPSIS = "micro ls [name] | micro info [name] [id] | micro stats [name] [id]";

/** Run `micro <ls|info|stats>`. */
export async function microCommand(ctx: Ctx): Promise<Output> {
  const [verb, name, id, ...extra] = ctx.cli.args;
  if (!verb || extra.length > 0 || (verb === "ls" && id !== undefined))
    throw new UsageError(`usage: syncd ${SYNOPSIS}`);
  switch (verb) {
    case "ls":
      return microLs(ctx, name);
    case "info":
      return microInfo(ctx, name, id);
    case "stats":
      return microStats(ctx, name, id);
    default:
      throw new UsageError(`unknown micro command "${verb}"; usage: syncd ${SYNOPSIS}`);
  }
}

function nothing(name: string | undefined, id: string | undefined): CliError {
  return new CliError(
    name ? `no instance of ${name}${id ? ` with id ${id}` : ""} answered` : "no micro service answered",
  );
}

async function microLs(ctx: Ctx, name: string | undefined): Promise<Output> {
  const infos = await discover<MicroInfo>(ctx.mesh, "INFO", name);
  const rows: MicroLsRow[] = infos.map((i) => ({
    name: i.name,
    id: i.id,
    version: i.version,
    site: i.metadata?.site ?? null,
    description: i.description ?? "",
    metadata: i.metadata ?? {},
  }));
  const text =
    rows.length === 0
      ? "no micro services found"
      : `${table(
          ["NAME", "ID", "VERSION", "SITE", "DESCRIPTION"],
          rows.map((r) => [r.name, r.id, r.version, r.site, r.description]),
        )}\n\n${rows.length} instance${rows.length === 1 ? "" : "s"}`;
  return { data: rows, text };
}

async function microInfo(ctx: Ctx, name: string | undefined, id: string | undefined): Promise<Output> {
  const infos = await discover<MicroInfo>(ctx.mesh, "INFO", name, id);
  if (infos.length === 0) throw nothing(name, id);
  const blocks = infos.map((i) => {
    const md = i.metadata ?? {};
    const lines = [
      `${i.name} ${i.version}  id ${i.id}${md.site ? `  site ${md.site}` : ""}`,
      `  description: ${i.description ?? ""}`,
      `  metadata:    ${
        Object.entries(md)
          .map(([k, v]) => `${k}=${v}`)
          .join(" ") || "-"
      }`,
      "",
      table(
        ["  ENDPOINT", "SUBJECT", "QUEUE GROUP", "REQUEST SCHEMA", "RESPONSE SCHEMA"],
        (i.endpoints ?? []).map((e) => [
          `  ${e.name}`,
          e.subject,
          e.queue_group,
          e.metadata?.["schema.request"],
          e.metadata?.["schema.response"],
        ]),
      ),
    ];
    return lines.join("\n");
  });
  return { data: infos, text: blocks.join("\n\n") };
}

async function microStats(ctx: Ctx, name: string | undefined, id: string | undefined): Promise<Output> {
  const stats = await discover<MicroStats>(ctx.mesh, "STATS", name, id);
  if (stats.length === 0) throw nothing(name, id);
  const rows = stats.flatMap((s) =>
    (s.endpoints ?? []).map((e) => [
      s.name,
      s.metadata?.site,
      s.id,
      e.name,
      e.num_requests,
      e.num_errors,
      nanosText(e.processing_time),
      nanosText(e.average_processing_time),
      e.last_error ? clip(e.last_error, 50) : undefined,
    ]),
  );
  // endpoint data; an instance whose endpoints all carry the same data shows it once
  const data = stats.flatMap((s) => {
    const who = `${s.name}@${s.metadata?.site ?? "?"} ${s.id}`;
    const withData = (s.endpoints ?? [])
      .filter((e) => e.data !== undefined && e.data !== null)
      .map((e) => ({ name: e.name, json: JSON.stringify(e.data) }));
    const distinct = new Set(withData.map((e) => e.json));
    if (distinct.size === 1 && withData.length === (s.endpoints ?? []).length && withData.length > 1)
      return [`  ${who}: ${withData[0]!.json}`];
    return withData.map((e) => `  ${who} ${e.name}: ${e.json}`);
  });
  const text = [
    table(
      ["NAME", "SITE", "ID", "ENDPOINT", "REQUESTS", "ERRORS", "PROCESSING", "AVERAGE", "LAST ERROR"],
      rows,
    ),
    ...(data.length > 0 ? ["", "data:", ...data] : []),
  ].join("\n");
  return { data: stats, text };
}
