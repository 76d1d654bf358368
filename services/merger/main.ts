/** Entry point of syncd-merger: `node --import tsx services/merger/main.ts --site a ...` */
import { runService } from "../lib/runtime.ts";
import { counts, deadByCode, wireMerger } from "./service.ts";

await runService("merger", {
  description: "applies ops to the site's buckets by last-writer-wins",
  wire: wireMerger,
  statsData: (ep) => (ep === "merge" ? { ...counts, ...deadByCode } : null),
});
