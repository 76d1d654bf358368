/** KV bucket helpers for the launcher scripts and the test harness. */
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import { isStreamNotFound } from "../../services/mod.ts";

/**
 * Open `bucket` on the server `nc` is connected to, creating it (history 1, as the services do) when
 * it does not exist yet.
 */
export async function openOrCreateBucket(nc: NatsConnection, bucket: string): Promise<KV> {
  const kvm = new Kvm(nc);
  try {
    const kv = await kvm.open(bucket);
    await kv.status();
    return kv;
  } catch (err) {
    if (!isStreamNotFound(err)) throw err;
  }
  return kvm.create(bucket, { history: 1 });
}
