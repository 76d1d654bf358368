/**
 * fast-check settings from the environment, so a failing property replays:
 * `FC_SEED=<seed> FC_RUNS=<n> ./scripts/test.sh` (the seed is printed on failure).
 */
import type { Parameters } from "fast-check";

const seed = process.env.FC_SEED ? Number(process.env.FC_SEED) : undefined;
const runs = process.env.FC_RUNS ? Number(process.env.FC_RUNS) : undefined;

/** Parameters for fc.assert: env seed and run count when given. */
export function fcParams<T>(defaults: Parameters<T> = {}): Parameters<T> {
  return {
    ...defaults,
    ...(seed !== undefined ? { seed } : {}),
    ...(runs !== undefined ? { numRuns: runs } : {}),
  };
}
