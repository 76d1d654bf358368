/** Entry point of syncd-reconciler: `node --import tsx services/reconciler/main.ts --site a ...` */
import { METRIC_NAMES } from "../lib/metrics.ts";
import { runService } from "../lib/runtime.ts";
import { statsData, wireReconciler } from "./service.ts";

/** The reconciler's counts (null before it is wired). */
const counts = () =>
  (statsData() ?? {}) as Partial<Record<"runs" | "run_errors" | "pulled" | "pushed", number>>;

await runService("reconciler", {
  description: "anti-entropy with peer sites: version-tree digests, then only the differing entries",
  wire: wireReconciler,
  statsData: () => statsData(),
  metrics: (m) => {
    m.counterFrom(METRIC_NAMES.reconcileRuns, "anti-entropy runs", [], () => counts().runs ?? 0);
    m.counterFrom(
      METRIC_NAMES.reconcileFailures,
      "anti-entropy runs that failed",
      [],
      () => counts().run_errors ?? 0,
    );
    m.counterFrom(
      METRIC_NAMES.reconcileMoved,
      "entries moved by anti-entropy, by direction",
      ["direction"],
      () => [
        { labels: { direction: "pulled" }, value: counts().pulled ?? 0 },
        { labels: { direction: "pushed" }, value: counts().pushed ?? 0 },
      ],
    );
  },
});
