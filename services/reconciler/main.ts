/** Entry point of syncd-reconciler: `node services/run.mjs reconciler --site a ...` */
import { runService } from "../lib/runtime.ts";
import { reconcilerService } from "./service.ts";

await runService("reconciler", reconcilerService);
