/** Entry point of syncd-watcher: `node --import tsx services/watcher/main.ts --site a ...` */
import { METRIC_NAMES, type Sample, byLabel } from "../lib/metrics.ts";
import { runService } from "../lib/runtime.ts";
import { Durables, kvStream } from "../lib/subjects.ts";
import { counts, wireWatcher } from "./service.ts";

await runService("watcher", {
  description: "turns local writes of the site's buckets into ops",
  wire: wireWatcher,
  statsData: (ep) => (ep === "status" ? Object.fromEntries(counts) : null),
  consumers: (config) =>
    config.buckets.map((b) => ({ stream: kvStream(b), durable: Durables.watcher(config.site, b) })),
  metrics: (m, { config, site }) => {
    m.counterFrom(
      METRIC_NAMES.watcherOps,
      "local writes handled, by bucket and outcome",
      ["bucket", "outcome"],
      () => [...counts].flatMap(([bucket, c]) => byLabel("outcome", c, { bucket })),
    );
    m.gaugeFrom(METRIC_NAMES.watcherLag, "local writes not yet turned into ops", ["bucket"], () =>
      Promise.all(
        config.buckets.map(async (bucket): Promise<Sample> => {
          const ci = await site.jsm.consumers.info(kvStream(bucket), Durables.watcher(config.site, bucket));
          return { labels: { bucket }, value: ci.num_pending };
        }),
      ),
    );
  },
});
