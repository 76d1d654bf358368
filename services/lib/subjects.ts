/**
 * Every subject, stream, bucket, header and durable name of the mesh, in one place.
 * Wire names stay as the original agents had them (`rep.kv.ops`, `<bucket>_meta`).
 */

/**
 * The mesh namespace: what two meshes sharing one hub keep apart. No namespace (the default) gives
 * the names below; namespace `<m>` puts `<m>.` in front of every subject syncd uses (op subjects and
 * the hand-made ingress, endpoint, journal, dead-letter and conflict subjects) and `_<m>` after the
 * hub's aggregate stream and the members bucket. Site-local streams and buckets keep their names
 * (each site has its own JetStream domain). Micro services announce it as metadata `mesh`.
 */
export type MeshNames = {
  /** the namespace, undefined for the default mesh */
  mesh: string | undefined;
  /** prefix of every subject: `""` or `<m>.` */
  prefix: string;
  opsIngress: string;
  hubStream: string;
  membersBucket: string;
};

/** Letters, digits, `-` and `_`: a mesh name is a subject token and part of stream names. */
export const MESH_NAME = /^[A-Za-z0-9_-]+$/;

/** The names of mesh `mesh` (undefined or "": the default mesh). Throws on a name that is not a token. */
export function meshNames(mesh?: string): MeshNames {
  const m = mesh === "" ? undefined : mesh;
  if (m !== undefined && !MESH_NAME.test(m))
    throw new TypeError(`mesh name must match ${MESH_NAME}, got "${m}"`);
  const prefix = m === undefined ? "" : `${m}.`;
  return {
    mesh: m,
    prefix,
    opsIngress: `${prefix}rep.kv.ops`,
    hubStream: m === undefined ? "SYNCD_HUB" : `SYNCD_HUB_${m}`,
    membersBucket: m === undefined ? "syncd_members" : `syncd_members_${m}`,
  };
}

let names = meshNames();

/**
 * Use mesh namespace `mesh` for every name this module gives from now on (one per process: the
 * services and the CLI call it once, from `--mesh`/`SYNCD_MESH`, before they touch NATS).
 */
export function useMesh(mesh: string | undefined): void {
  names = meshNames(mesh);
  OPS_INGRESS = names.opsIngress;
  MEMBERS_BUCKET = names.membersBucket;
}

/** The mesh namespace in use (undefined: the default mesh). */
export function currentMesh(): string | undefined {
  return names.mesh;
}

/** True when a micro service's metadata says it belongs to the mesh in use. */
export function inCurrentMesh(metadata: Record<string, string> | null | undefined): boolean {
  return (metadata?.mesh || undefined) === names.mesh;
}

/** Hand-made op ingress: anyone may `nats pub rep.kv.ops '<op>'` at any site (`<m>.rep.kv.ops` in mesh `<m>`). */
export let OPS_INGRESS = names.opsIngress;

/**
 * The subject of the ops a site publishes for one key: `rep.kv.ops.<site>.<bucket>.<key>` (a KV key
 * is a valid subject tail). Every op stream keeps one message per subject, so a log holds at most
 * one op per key per origin site: the greatest version that site published for the key.
 */
export function opsSubject(site: string, bucket: string, key: string): string {
  return `${OPS_INGRESS}.${site}.${bucket}.${key}`;
}

/** Every op a site publishes: the subjects of its outbound stream. */
export function opsFilter(site: string): string {
  return `${OPS_INGRESS}.${site}.>`;
}

/** The subject of a site's ops in the full-mesh topology before 2026-12 (one subject per site). */
export function legacyOpsSubject(site: string): string {
  return `${OPS_INGRESS}.${site}`;
}

/** The four services, by their micro names. */
export const ServiceName = {
  clock: "syncd-clock",
  watcher: "syncd-watcher",
  merger: "syncd-merger",
  reconciler: "syncd-reconciler",
} as const;
export type ServiceKind = keyof typeof ServiceName;
/** The name of the process that runs the four services of a site together (logs, connection name). */
export const AGENT_NAME = "syncd-agent";

/** Endpoint subject: `syncd.<site>.<service>.<endpoint>` (service without the `syncd-` prefix). */
export function endpointSubject(site: string, service: ServiceKind, endpoint: string): string {
  return `${siteSubjectPrefix(site)}${service}.${endpoint}`;
}

/** What every subject of a site's endpoints, journal, dead letters and conflicts starts with: `[<m>.]syncd.<site>.` */
export function siteSubjectPrefix(site: string): string {
  return `${names.prefix}syncd.${site}.`;
}

/**
 * Journal subject of a site, captured by its IN stream: the merge endpoint records every op here
 * before applying it, so an op whose merge dies half-way is applied again by the merger's consumer.
 */
export function journalSubject(site: string): string {
  return `${siteSubjectPrefix(site)}journal`;
}

/** Dead-letter subject of a site: bad ops are kept here with their reason. */
export function dlqSubject(site: string): string {
  return `${siteSubjectPrefix(site)}dlq`;
}

/** Conflict-log subject of a site: the losing side of every conflict, with both versions. */
export function conflictsSubject(site: string): string {
  return `${siteSubjectPrefix(site)}conflicts`;
}

/** Streams of a site, and the hub's. Names are unique per site (FINDINGS pitfall 3). */
export const Streams = {
  /** own ops, subjects `rep.kv.ops.<site>.<bucket>.<key>`, one per key: what the hub sources */
  out: (site: string) => `SYNCD_OPS_${site}`,
  /** every site's ops, one per key and origin: sources the hub's aggregate, consumed by the merger */
  in: (site: string) => `SYNCD_FEED_${site}`,
  /** hand-made ops (`rep.kv.ops`) and the merge endpoint's journal, consumed by the merger */
  ingress: (site: string) => `SYNCD_IN_${site}`,
  /** the hub's aggregate (in the hub's JetStream domain): sources every site's OUT once; `SYNCD_HUB_<m>` in mesh `<m>` */
  get hub(): string {
    return names.hubStream;
  },
  /** the full-mesh outbound stream before 2026-12 (subject `rep.kv.ops.<site>`); migration only */
  legacyOut: (site: string) => `SYNCD_OUT_${site}`,
  /** bad ops with their reason */
  dlq: (site: string) => `SYNCD_DLQ_${site}`,
  /** conflict records (schemas/conflict.json) */
  conflicts: (site: string) => `SYNCD_CONFLICTS_${site}`,
} as const;

/** The KV stream behind a bucket, and the subject of a key in it. */
export function kvStream(bucket: string): string {
  return `KV_${bucket}`;
}
export function kvSubject(bucket: string, key: string): string {
  return `$KV.${bucket}.${key}`;
}
/** Every key of a bucket: the subject filter of its KV stream. */
export function kvFilter(bucket: string): string {
  return kvSubject(bucket, ">");
}
/** The key of a bucket's KV subject (the inverse of kvSubject); throws on a subject of another bucket. */
export function kvKeyOf(bucket: string, subject: string): string {
  const prefix = kvSubject(bucket, "");
  if (!subject.startsWith(prefix) || subject.length === prefix.length) {
    throw new Error(`${subject} is not a key subject of bucket ${bucket}`);
  }
  return subject.slice(prefix.length);
}

/** The version (LWW metadata) bucket of a data bucket: the commit point. */
export function metaBucket(bucket: string): string {
  return `${bucket}_meta`;
}

/** The persisted site clock: bucket and key. */
export const CLOCK_BUCKET = "syncd_clock";
export const CLOCK_KEY = "hw";

/**
 * Durable consumer names, shared by every instance of a service at a site. Unique per site: a
 * consumer's ack subject ($JS.ACK.<stream>.<durable>.…) crosses the leaf connection, and the KV
 * stream has the same name at every site, so a shared durable name would let one site's acks
 * acknowledge another site's messages.
 */
export const Durables = {
  watcher: (site: string, bucket: string) => `syncd-watcher-${site}-${bucket}`,
  /** the watcher's bridge from the legacy outbound stream into the compacted one (migration) */
  bridge: (site: string) => `syncd-bridge-${site}`,
  merger: "syncd-merger",
  /** prefix of the short-lived consumers a reconciler reads `_meta` and the bucket with (deleted once read) */
  indexRead: "syncd-index-read",
} as const;

/**
 * `Nats-Msg-Id`s of the ops a site publishes on its OUT stream: a re-publish of the same op is a
 * duplicate, two different ops never share an id. Bucket names are `[a-zA-Z0-9_-]+`, so the `~`
 * of a forwarded hand-made op can never meet a local write's id (a bucket named `in` included).
 */
export const MsgIds = {
  /** the op of local write `rev` of a bucket (in incarnation `inc` of the bucket, when known) */
  localWrite: (site: string, bucket: string, rev: number, inc?: number) =>
    inc === undefined ? `${site}.${bucket}.${rev}` : `${site}.${bucket}@${inc}.${rev}`,
  /** a hand-made op taken from the IN stream at `seq` (of its incarnation `inc`) and forwarded to the peers */
  forwarded: (site: string, seq: number, inc?: number) =>
    inc === undefined ? `${site}.~ingress.${seq}` : `${site}.~ingress@${inc}.${seq}`,
} as const;

/** The message id of an op the merger forwards from the ingress: a re-forward is a duplicate. */
export function forwardMsgId(site: string, ingressSeq: number, inc?: number): string {
  return MsgIds.forwarded(site, ingressSeq, inc);
}

/** Queue group of every syncd endpoint: instances of a service at a site share requests. */
export const QUEUE_GROUP = "syncd";

/** Headers a merger-written bucket entry carries: its LWW version, atomically with the value. */
export const Headers = {
  ts: "Syncd-Ts",
  node: "Syncd-Node",
  /** the reason a dead-lettered op was refused */
  reason: "Syncd-Reason",
  /** the error code of a dead-lettered op */
  code: "Syncd-Code",
  /** the stream and sequence a dead-lettered op came from */
  origin: "Syncd-Origin",
  /** an op in the split wire form: its JSON without the value, which is the payload (services/lib/op.ts) */
  op: "Syncd-Op",
  /**
   * on a peer's digest and entries requests after the root: the `_meta` sequence the root's answer
   * accounted for (its `meta_seq`); an instance whose index is older catches up before answering
   */
  minMetaSeq: "Syncd-Min-Meta-Seq",
  /** NATS KV's own header: "DEL" or "PURGE" on a delete or purge marker, absent on a put */
  kvOperation: "KV-Operation",
} as const;

/**
 * Mesh membership, a KV bucket in the hub's JetStream domain (`syncd_members_<m>` in mesh `<m>`): one record per site under
 * `sites.<site>` (schemas/reconciler/member.json) and one claim per JetStream domain under
 * `domains.<domain>`, each owned by the site identity that wrote it first.
 */
export let MEMBERS_BUCKET = names.membersBucket;
export function memberKey(site: string): string {
  return `sites.${site}`;
}
export function domainKey(domain: string): string {
  return `domains.${domain}`;
}
/**
 * The record of a site refused as a duplicate (schemas/reconciler/refused.json): `owner` holds the
 * contested name or domain, `identity` is the refused site's. Prefix `refused.<owner>.` for all of an owner's.
 */
export function refusedKey(owner: string, identity: string): string {
  return `refused.${owner}.${identity}`;
}
/** The site-local bucket and key of the site's identity: a random id made once, kept with the site's data. */
export const SITE_BUCKET = "syncd_site";
export const IDENTITY_KEY = "identity";

/**
 * The hub relay (README "What the mesh is", isolated leaf interest): a hub with
 * `isolate_leafnode_interest` does not tell a site about the other sites' subscriptions, so a site
 * reaches another site's endpoints by publishing `syncd_via.<subject>`, which the hub maps back to
 * `<subject>` (`mappings { "syncd_via.*.>": "{{wildcard(1)}}.>" }`); replies come back on
 * `syncd_reply.>` (an identity mapping at the hub). A site learns one interest per mapping, whatever N.
 */
export const RELAY_PREFIX = "syncd_via";
/** Root token of the reply subjects of requests relayed by the hub. */
export const RELAY_REPLY_PREFIX = "syncd_reply";
/** The site token of relay replies of clients that are no service (the syncd CLI, tools): `syncd_reply.cli.>`. */
export const CLIENT_REPLY_SITE = "cli";

/** The subject to publish at a site so that the hub delivers it on `subject` (two tokens at least). */
export function relaySubject(subject: string): string {
  return `${RELAY_PREFIX}.${subject}`;
}

/** Prefix of the reply subjects of one relay client (`syncd_reply.<site>.<id>`). */
export function relayReplyPrefix(site: string, id: string): string {
  return `${RELAY_REPLY_PREFIX}.${site}.${id}`;
}

/** The hub's subject mappings that carry relayed requests and their replies (hub.conf `mappings`). */
export const HUB_RELAY_MAPPINGS: Readonly<Record<string, string>> = {
  [`${RELAY_PREFIX}.*.>`]: "{{wildcard(1)}}.>",
  [`${RELAY_REPLY_PREFIX}.>`]: `${RELAY_REPLY_PREFIX}.>`,
};

/** The header a sourced message carries naming its origin stream and sequence. */
const SOURCE_HEADER = "Nats-Stream-Source";

/**
 * The sequence in origin stream `origin` a sourced message was copied from: its `Nats-Stream-Source`
 * header names the origin (`<name>` or `<name>:<hash of the external API prefix>`) and the sequence;
 * undefined when the message was not sourced from that stream.
 */
export function sourceSeqOf(
  h: { values(k: string): string[] } | undefined,
  origin: string,
): number | undefined {
  if (!h) return undefined;
  let out: number | undefined;
  for (const v of h.values(SOURCE_HEADER)) {
    const [name, seq] = v.trim().split(/\s+/);
    if (!name || !seq || name.split(":")[0] !== origin) continue;
    const n = Number(seq);
    if (Number.isSafeInteger(n) && n > 0) out = n;
  }
  return out;
}

/** The hub sequence a FEED message was sourced from (its `Nats-Stream-Source` naming SYNCD_HUB). */
export function hubSeqOf(h: { values(k: string): string[] } | undefined): number | undefined {
  return sourceSeqOf(h, Streams.hub);
}
