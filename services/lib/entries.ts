/**
 * Paging through a reconciler's `entries` replies: a reply stays under the server's max payload
 * and says how far it got (`truncated`, `keys_done`, `next_after`); ask again from there.
 */
import type { ReconcilerEntriesRequest, ReconcilerEntriesResponse } from "./schemas.gen.ts";

/** Every page of an `entries` listing, in order. `fetch` sends one request; `stuck` names a peer that made no progress. */
export async function* pageEntries(
  fetch: (req: ReconcilerEntriesRequest) => Promise<ReconcilerEntriesResponse>,
  req: ReconcilerEntriesRequest,
  stuck: () => Error,
): AsyncGenerator<ReconcilerEntriesResponse["entries"]> {
  let keys = req.keys;
  let after = req.after;
  for (;;) {
    const ask: ReconcilerEntriesRequest = { ...req };
    if (keys) ask.keys = keys;
    if (after !== undefined) ask.after = after;
    const r = await fetch(ask);
    yield r.entries;
    if (!r.truncated) return;
    const done = r.keys_done ?? 0;
    if (keys) keys = keys.slice(done);
    if (r.next_after !== undefined) after = r.next_after;
    if (r.entries.length === 0 && done === 0) throw stuck();
  }
}
