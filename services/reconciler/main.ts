/** Entry point of syncd-reconciler: `node --import tsx services/reconciler/main.ts --site a ...` */
import { runService } from "../lib/runtime.ts";
import { statsData, wireReconciler } from "./service.ts";

await runService("reconciler", {
  description: "anti-entropy with peer sites: version-tree digests, then only the differing entries",
  wire: wireReconciler,
  statsData: () => statsData(),
});
