/**
 * `syncd reconcile [--site s] [--bucket b] [--peer p]`: run anti-entropy now
 * (`syncd.<site>.reconciler.run`) at every site one after the other (or at the one named) and print
 * the runs. A run that stopped early (its `error`) makes the exit code 1.
 */
import type { ReconcilerRunRequest, ReconcilerRunResponse } from "../lib/schemas.gen.ts";
import { CliError, expectArgs } from "./args.ts";
import type { Ctx, Output } from "./context.ts";
import { asCliError, findSites, pickSites, request } from "./nats.ts";
import { clip, table } from "./table.ts";

/** One run, with the site that ran it. */
export type SiteRun = { site: string } & ReconcilerRunResponse["runs"][number];

/** A run may take a while: wait at least this long for its answer. */
const MIN_RUN_TIMEOUT_MS = 120_000;

/** Run `reconcile`. */
export async function reconcileCommand(ctx: Ctx): Promise<Output> {
  expectArgs(ctx.cli, 0, 0, "reconcile [--site s] [--bucket b] [--peer p,...]");
  const sites = pickSites(await findSites(ctx.mesh), ctx.cli.site);
  const body: ReconcilerRunRequest = {
    ...(ctx.cli.bucket ? { bucket: ctx.cli.bucket } : {}),
    ...(ctx.cli.peers ? { peers: ctx.cli.peers } : {}),
  };
  const timeout = Math.max(ctx.cli.conn.timeoutMs, MIN_RUN_TIMEOUT_MS);
  const runs: SiteRun[] = [];
  // one site after the other: what the first run repaired, the next one does not move again
  for (const s of sites) {
    let r: ReconcilerRunResponse;
    try {
      r = (await request<ReconcilerRunResponse>(ctx.mesh, s.site, "reconciler", "run", body, timeout)).value;
    } catch (err) {
      throw asCliError(`reconcile at site ${s.site}`, err);
    }
    for (const run of r.runs) runs.push({ site: s.site, ...run });
  }
  const failed = runs.filter((r) => r.error);
  const t =
    runs.length === 0
      ? "no runs (no peer found)"
      : table(
          [
            "SITE",
            "PEER",
            "BUCKET",
            "COMPARED",
            "RANGES",
            "MOVED",
            "PULLED",
            "PUSHED",
            "SKIPPED",
            "BYTES",
            "MS",
            "ERROR",
          ],
          runs.map((r) => [
            r.site,
            r.peer,
            r.bucket,
            r.keys_compared,
            r.ranges_descended,
            r.entries_moved,
            r.pulled,
            r.pushed,
            r.skipped ?? 0,
            r.bytes,
            r.ms,
            r.error ? clip(r.error, 60) : "",
          ]),
        );
  const out: Output = { data: { runs }, text: t };
  if (failed.length > 0) {
    out.exitCode = 1;
    out.text += `\n\n${failed.length} run${failed.length === 1 ? "" : "s"} stopped early`;
  }
  if (ctx.cli.peers && runs.length === 0) throw new CliError(`no run against ${ctx.cli.peers.join(", ")}`);
  return out;
}
