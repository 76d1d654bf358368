/**
 * #14 point 5, config drift: changed limits of the streams the services own take effect on the next
 * start (the stream is updated), and a change the server cannot apply makes the service refuse to
 * start with a message naming the stream and the field. (nats-server 2.9 accepts 3 replicas on a
 * single server; a subject another stream holds is refused by both servers.)
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import {
  StreamDriftError,
  Streams,
  createLogger,
  ensureMergerStreams,
  ensureOutStream,
  loadConfig,
} from "../services/mod.ts";
import { withMesh } from "./helpers.ts";

const log = createLogger({ service: "test", site: "a", instance: "test", level: "silent" });
const NANOS = 1_000_000_000;

describe("config drift of the streams the services own", () => {
  const { nc } = withMesh({ sites: ["a"], services: false });

  it("a changed limit is applied to the existing stream on the next start", async () => {
    const jsm = await jetstreamManager(nc.a!);
    await ensureMergerStreams(jsm, loadConfig(["--site", "a", "--ops-max-age", "600"], {}), 1, log);
    assert.equal((await jsm.streams.info(Streams.ingress("a"))).config.max_age, 600 * NANOS);
    await ensureMergerStreams(jsm, loadConfig(["--site", "a", "--ops-max-age", "60"], {}), 1, log);
    assert.equal((await jsm.streams.info(Streams.ingress("a"))).config.max_age, 60 * NANOS);
    const cfg = loadConfig(["--site", "a", "--ops-max-bytes", String(8 * 1024 * 1024)], {});
    await ensureOutStream(jsm, cfg, 1, log);
    await ensureOutStream(
      jsm,
      loadConfig(["--site", "a", "--ops-max-bytes", String(4 * 1024 * 1024)], {}),
      1,
      log,
    );
    assert.equal((await jsm.streams.info(Streams.out("a"))).config.max_bytes, 4 * 1024 * 1024);
  });

  it("a change the server refuses stops the start with a clear error", async () => {
    const jsm = await jetstreamManager(nc.a!);
    // site q's op log exists with other subjects, and another stream holds the ones it needs now
    await jsm.streams.add({ name: Streams.out("q"), subjects: ["old.q.>"] });
    await jsm.streams.add({ name: "SOMEONE_ELSE", subjects: ["rep.kv.ops.q.>"] });
    await assert.rejects(
      ensureOutStream(jsm, loadConfig(["--site", "q"], {}), 1, log),
      (err: unknown) =>
        err instanceof StreamDriftError && /SYNCD_OPS_q/.test(err.message) && /subjects/.test(err.message),
    );
  });
});
