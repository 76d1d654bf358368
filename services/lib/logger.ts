/**
 * pino, JSON on stdout: object first, message second, errors under `err`. Secrets are redacted.
 */
import { type Logger, pino } from "pino";

export type { Logger };

/** Paths pino replaces with "[redacted]" wherever they appear in a log object. */
export const REDACT = [
  "password",
  "token",
  "creds",
  "auth.password",
  "auth.token",
  "auth.creds",
  "auth.nkeySeedFile",
  "config.auth.password",
  "config.auth.token",
  "*.password",
  "*.pass",
  "*.token",
];

/** The root logger of a service instance. */
export function createLogger(opts: {
  service: string;
  site: string;
  instance: string;
  level?: string;
}): Logger {
  return pino({
    level: opts.level ?? "info",
    base: { service: opts.service, site: opts.site, instance: opts.instance },
    redact: { paths: REDACT, censor: "[redacted]" },
    timestamp: pino.stdTimeFunctions.isoTime,
  });
}
