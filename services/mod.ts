/**
 * The public face of the services for tests, bench and scripts: everything they use of services/
 * comes through here (as nats.js has a mod.ts per package). Services themselves never import it.
 */
export { UsageError, parseCli, parseDuration } from "./cli/args.ts";
export { run } from "./cli/cli.ts";
export { type DiffResult, descendMany, differingKeys } from "./cli/diff.ts";
export { conditionsOf } from "./cli/status.ts";
export { table } from "./cli/table.ts";
export { type ClockDeps, Serial, observeTs } from "./clock/handlers.ts";
export { checkStores, clockService } from "./clock/service.ts";
export { addEndpoint } from "./lib/adapter.ts";
export { Observer, Ticker } from "./lib/clock-client.ts";
export {
  ClockMode,
  HLC_TICKS_PER_MS,
  LAMPORT_CATCH_UP_MS,
  admissible,
  catchUp,
  observe,
  reserve,
  skewMs,
} from "./lib/clock-rules.ts";
export { Columns, Hash8Column, Interner } from "./lib/columns.ts";
export { ConfigError, loadConfig, usage } from "./lib/config.ts";
export { connectNats } from "./lib/connect.ts";
export {
  Coalescer,
  KeyedGate,
  ensureConsumer,
  loserDisposition,
  runConsumer,
  termTakesReason,
} from "./lib/consume.ts";
export { ErrorCode, SyncdError, isSyncdError } from "./lib/errors.ts";
export {
  type Condition,
  Conditions,
  Health,
  type HealthView,
  MAX_CONDITIONS,
  STORE_ERROR,
  STORE_WARN,
  Severity,
  type StoreUsage,
  health,
  needsPerson,
  reportStores,
  streamUsage,
} from "./lib/health.ts";
export { type IdleGcOptions, startIdleGc } from "./lib/idle-gc.ts";
export {
  apiCode,
  isAlreadyExists,
  isConsumerNotFound,
  isNatsError,
  isNoResponders,
  isNotFound,
  isStreamNotFound,
  isTimeout,
  isTooLarge,
  isTransientNatsError,
  isWrongLastSequence,
} from "./lib/jserrors.ts";
export { createLogger } from "./lib/logger.ts";
export { type Versioned, compare, compareBytes, compareVersions, merge, valueHash, wins } from "./lib/lww.ts";
export { CachedMetaStore, EntryColumns } from "./lib/meta-cache.ts";
export { MetaWatch } from "./lib/meta-watch.ts";
export { METRIC_NAMES, Metrics } from "./lib/metrics.ts";
export {
  INLINE_OP_MAX,
  type Op,
  decodeOpMessage,
  encodeOpMessage,
  encodeValue,
  makeOp,
  opMessageSize,
  opValue,
  opValueSize,
  opVersioned,
  parseOp,
} from "./lib/op.ts";
export {
  type LastOpReader,
  currentOwnOp,
  lastOp,
  metaHoldsOp,
  ownOpOf,
  publishOrdered,
  versionIsOp,
} from "./lib/oplog.ts";
export { type Planting, plantVersion } from "./lib/plant.ts";
export {
  REARM_MAX_HUB_SOURCES,
  REARM_STALL_MS,
  RearmGate,
  rearmSource,
  rearmsHubSource,
  sourcesBackOff,
  versionOfStreamConfig,
} from "./lib/rearm.ts";
export { ServiceReplyError, parseReply, requestJson } from "./lib/request.ts";
export {
  type Running,
  type ServiceDef,
  SharedMetaCaches,
  VERSION,
  processErrors,
  runService,
  unannouncedService,
} from "./lib/runtime.ts";
export type {
  ClockNowResponse,
  ClockObserveRequest,
  ClockTickResponse,
  Conflict,
  MergerMergeResponse,
  MergerStatusResponse,
  ReconcilerDigestResponse,
  ReconcilerEntriesResponse,
  ReconcilerRunResponse,
  ReconcilerStatusResponse,
  Version,
  WatcherStatusResponse,
} from "./lib/schemas.gen.ts";
export {
  StreamDriftError,
  ensureHubRegistration,
  ensureMergerStreams,
  ensureOutStream,
  type LastOpAtHub,
  lastOpAtHub,
  openOrCreateKv,
  openSite,
  siteLinked,
  siteQuiet,
  sourcedUpTo,
  type Sourced,
} from "./lib/site.ts";
export {
  type BucketEntry,
  type BucketStoreLike,
  CasConflictError,
  type MetaEntry,
  MetaStore,
  type MetaStoreLike,
  expiryProblem,
  isCasConflict,
  mergerHeaderBytes,
  mergerHeaders,
  mergerVersion,
  parseVersion,
} from "./lib/stores.ts";
export {
  AGENT_NAME,
  CLOCK_BUCKET,
  Durables,
  Headers,
  MEMBERS_BUCKET,
  MESH_NAME,
  type MeshNames,
  MsgIds,
  OPS_INGRESS,
  QUEUE_GROUP,
  RELAY_PREFIX,
  RELAY_REPLY_PREFIX,
  CLIENT_REPLY_SITE,
  HUB_RELAY_MAPPINGS,
  type ServiceKind,
  ServiceName,
  Streams,
  hubSeqOf,
  sourceSeqOf,
  currentMesh,
  domainKey,
  endpointSubject,
  inCurrentMesh,
  journalSubject,
  kvFilter,
  kvKeyOf,
  kvStream,
  kvSubject,
  legacyOpsSubject,
  memberKey,
  meshNames,
  metaBucket,
  opsFilter,
  opsSubject,
  refusedKey,
  relayReplyPrefix,
  relaySubject,
  siteSubjectPrefix,
  useMesh,
} from "./lib/subjects.ts";
export { MeshTransport, type Route, requestAnywhere } from "./lib/transport.ts";
export {
  type MergeDeps,
  admit,
  applyOp,
  bucketHolds,
  covered,
  greaterOp,
  headerBytesBound,
  ownOpSettled,
  pendingLocal,
} from "./merger/handlers.ts";
export { mergerService } from "./merger/service.ts";
export { type EntriesDeps, type WireEntry, digest, entries } from "./reconciler/handlers.ts";
export { PeerBook } from "./reconciler/peers.ts";
export { Reconciler, type ReconcilerDeps } from "./reconciler/reconciler.ts";
export { Pump, RateLimiter, hashUnhashed } from "./reconciler/run.ts";
export {
  type KeyVersion,
  VersionTree,
  descend,
  entryHash,
  leafOf,
  plan,
  treeSource,
} from "./reconciler/tree.ts";
export { type Phase, barrier } from "./reconciler/tombstones.ts";
export { HeldMap } from "./reconciler/versions.ts";
export { type ValueSource, readVersioned } from "./reconciler/values.ts";
export {
  type LocalEntry,
  Outcome,
  type WatcherDeps,
  newerLocal,
  opMsgId,
  stampEntry,
} from "./watcher/handlers.ts";
export { watcherService } from "./watcher/service.ts";
export { RegistrationRounds } from "./watcher/rounds.ts";
