/** Entry point of syncd-clock: `node --import tsx services/clock/main.ts --site a ...` */
import { METRIC_NAMES } from "../lib/metrics.ts";
import { runService } from "../lib/runtime.ts";
import { counts, wireClock } from "./service.ts";

await runService("clock", {
  description: "the site's persisted hybrid logical (or Lamport) clock",
  wire: wireClock,
  statsData: (ep) => (ep === "tick" ? { ...counts } : null),
  metrics: (m) => {
    m.counterFrom(METRIC_NAMES.clockTicks, "timestamps given out", [], () => counts.ticks);
    m.counterFrom(METRIC_NAMES.clockObserved, "remote timestamps observed", [], () => counts.observed);
    m.counterFrom(
      METRIC_NAMES.skewRefused,
      "observed timestamps refused as too far ahead (HLC skew, Lamport jump)",
      [],
      () => counts.skew_refused,
    );
  },
});
