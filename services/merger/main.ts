/** Entry point of syncd-merger: `node services/run.mjs merger --site a ...` */
import { runService } from "../lib/runtime.ts";
import { mergerService } from "./service.ts";

await runService("merger", mergerService);
