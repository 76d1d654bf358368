/**
 * Reading a key's value together with the version it really belongs to.
 *
 * `_meta` is committed before the bucket is written, so the meta version and the bucket's latest
 * value can briefly disagree. A value is only ever sent with a version that is provably its own:
 * - a merger-written entry carries its version in its headers;
 * - a user's write (no headers) belongs to the meta version iff the watcher stamped exactly that
 *   revision: meta.rev = entry revision, meta.node_id = this site's node, and not `merged`. A
 *   merger commit (`merged: true`) describes the op's value, which is in the bucket only under
 *   matching headers, even when its node_id is this site's (a hand-made op, or this site's own op
 *   coming back) and its rev is the revision of the local write it replaced: until the merger has
 *   written the bucket, that local value is not the committed version's;
 * - a tombstone needs no value.
 * Anything else is in flux (a merge or a stamp in progress): the caller skips the key this time.
 */
import type { BucketStoreLike, MetaStoreLike } from "../lib/stores.ts";
import type { VersionInfo } from "./tree.ts";

/** A version with its value bytes (none for a tombstone), or "in flux". */
export type VersionedValue =
  | { ok: true; version: VersionInfo; value?: Uint8Array }
  | { ok: false; reason: "in_flux" };

/** The stores of one bucket, and this site's node id. */
export type ValueSource = { meta: MetaStoreLike; data: BucketStoreLike; nodeId: string };

/**
 * The current value of a key with its own version. `known` is the version the index holds: a
 * tombstone there is answered without reading. The version returned has no `vh`: the caller
 * hashes the value it sends if it needs one.
 */
export async function readVersioned(
  src: ValueSource,
  key: string,
  known?: VersionInfo,
): Promise<VersionedValue> {
  if (known?.deleted) return { ok: true, version: { ts: known.ts, node_id: known.node_id, deleted: true } };
  const l = await src.data.latest(key);
  if (l?.version) {
    const version = { ts: l.version.ts, node_id: l.version.node_id, deleted: l.deleted };
    return l.deleted ? { ok: true, version } : { ok: true, version, value: l.value };
  }
  const m = await src.meta.get(key);
  if (!m) return { ok: false, reason: "in_flux" };
  const v = m.version;
  const version = { ts: v.ts, node_id: v.node_id, deleted: v.deleted };
  if (v.deleted) return { ok: true, version };
  if (l && !l.deleted && !v.merged && l.rev === v.rev && v.node_id === src.nodeId)
    return { ok: true, version, value: l.value };
  return { ok: false, reason: "in_flux" };
}
