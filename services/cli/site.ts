import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
/**
 * `syncd site remove <name>`: take a site out of the mesh so it leaves nothing behind: its member
 * record and domain claim in the hub's members bucket (and the records of duplicates refused in its
 * name, `refused.<name>.>`), its source in the hub's aggregate stream;
 * the other sites' reconcilers see the record go and forget the peer. Its ops stay in the aggregate:
 * they are the mesh's state (every other site holds them already, a new site bootstraps from them).
 * The site's services must be stopped first (a running site would register itself again).
 */
import { isNotFound } from "../lib/jserrors.ts";
import { editSources } from "../lib/rearm.ts";
import { MEMBERS_BUCKET, Streams, domainKey, memberKey, refusedKey } from "../lib/subjects.ts";
import { CliError, UsageError, expectArgs } from "./args.ts";
import type { Ctx, Output } from "./context.ts";
import { findSites } from "./nats.ts";

const SYNOPSIS = "site remove <name>";
const dec = new TextDecoder();

/** What `site remove` did. */
export type SiteRemoved = {
  site: string;
  domain: string;
  member_record: boolean;
  domain_claim: boolean;
  hub_source: boolean;
  /** records of duplicates refused in its name or domain, removed */
  refused_records: number;
};

/** Run `site`. */
export async function siteCommand(ctx: Ctx): Promise<Output> {
  const [verb, name] = expectArgs(ctx.cli, 2, 2, SYNOPSIS);
  if (verb !== "remove") throw new UsageError(`usage: syncd ${SYNOPSIS}`);
  if (!/^[A-Za-z0-9_-]+$/.test(name!))
    throw new UsageError(`site name must match [A-Za-z0-9_-]+, got "${name}"`);
  const site = name!;
  const running = (await findSites(ctx.mesh)).find((s) => s.site === site);
  if (running)
    throw new CliError(`site ${site} is still running (its merger answers): stop its services first`);
  const hubDomain = ctx.cli.hubDomain;
  const out: SiteRemoved = {
    site,
    domain: site,
    member_record: false,
    domain_claim: false,
    hub_source: false,
    refused_records: 0,
  };
  const js = jetstream(ctx.nc, { domain: hubDomain, timeout: ctx.cli.conn.timeoutMs });
  let kv: Awaited<ReturnType<Kvm["open"]>> | undefined;
  try {
    kv = await new Kvm(js).open(MEMBERS_BUCKET);
    await kv.status();
  } catch (err) {
    if (!isNotFound(err))
      throw new CliError(`cannot reach the members bucket in domain ${hubDomain}: ${String(err)}`);
    kv = undefined;
  }
  if (kv) {
    const rec = await kv.get(memberKey(site));
    if (rec?.operation === "PUT") {
      try {
        const m = JSON.parse(dec.decode(rec.value)) as { domain?: string; identity?: string };
        if (m.domain) out.domain = m.domain;
        const claim = await kv.get(domainKey(out.domain));
        if (claim?.operation === "PUT") {
          const c = JSON.parse(dec.decode(claim.value)) as { identity?: string };
          if (c.identity === m.identity) {
            await kv.purge(domainKey(out.domain));
            out.domain_claim = true;
          }
        }
      } catch (err) {
        ctx.warn(`the member record of ${site} is not JSON (${String(err)}); removing it anyway`);
      }
      await kv.purge(memberKey(site));
      out.member_record = true;
    }
    const refused: string[] = [];
    for await (const k of await kv.keys(refusedKey(site, ">"))) refused.push(k);
    for (const k of refused) await kv.purge(k);
    out.refused_records = refused.length;
  }
  const jsm = await jetstreamManager(ctx.nc, { domain: hubDomain, timeout: ctx.cli.conn.timeoutMs });
  try {
    // checked after the write until it holds: a watcher's update based on an earlier read may put it back
    out.hub_source = await editSources(jsm, Streams.hub, (cfg) => {
      const sources = cfg.sources ?? [];
      const keep = sources.filter((s) => s.name !== Streams.out(site));
      return keep.length === sources.length ? undefined : { ...cfg, sources: keep };
    });
  } catch (err) {
    if (!isNotFound(err))
      throw new CliError(`cannot update ${Streams.hub} in domain ${hubDomain}: ${String(err)}`);
  }
  const what = [
    out.member_record ? "member record" : undefined,
    out.domain_claim ? `claim of domain ${out.domain}` : undefined,
    out.hub_source ? `source ${Streams.out(site)} of ${Streams.hub}` : undefined,
    out.refused_records > 0 ? `${out.refused_records} record(s) of duplicates refused` : undefined,
  ].filter(Boolean);
  const text =
    what.length === 0
      ? `site ${site}: nothing to remove (not a member, not a source of the hub)`
      : `site ${site} removed: ${what.join(", ")}. Its ops stay in ${Streams.hub} (the mesh's state); the other sites forget it as a peer.`;
  return { data: out, text };
}
