/** Entry point of syncd-merger: `node --import tsx services/merger/main.ts --site a ...` */
import { METRIC_NAMES, byLabel } from "../lib/metrics.ts";
import { runService } from "../lib/runtime.ts";
import { Durables, Streams } from "../lib/subjects.ts";
import { counts, deadByCode, wireMerger } from "./service.ts";

await runService("merger", {
  description: "applies ops to the site's buckets by last-writer-wins",
  wire: wireMerger,
  statsData: (ep) => (ep === "merge" ? { ...counts, ...deadByCode } : null),
  consumers: (config) => [{ stream: Streams.in(config.site), durable: Durables.merger }],
  metrics: (m, { config, site }) => {
    m.counterFrom(METRIC_NAMES.mergerOps, "ops handled, by result", ["result"], () =>
      byLabel("result", {
        applied: counts.applied,
        stale: counts.stale,
        duplicate: counts.duplicate,
        forwarded: counts.forwarded,
        errors: counts.errors,
      }),
    );
    m.counterFrom(METRIC_NAMES.deadLetters, "ops dead-lettered, by error code", ["code"], () =>
      byLabel("code", deadByCode),
    );
    m.counterFrom(METRIC_NAMES.conflicts, "concurrent writes resolved by LWW", [], () => counts.conflicts);
    m.gaugeFrom(METRIC_NAMES.mergerBacklog, "ops waiting in the inbound stream", [], async () => {
      const ci = await site.jsm.consumers.info(Streams.in(config.site), Durables.merger);
      return ci.num_pending;
    });
  },
});
