export {
  HeraldClient,
  type HeraldClientOptions,
  type StateEvent,
  type ConnectionState,
  type SubscribeOptions,
  type WebSocketCtor,
  type WebSocketLike,
} from "./client.js";
export { Subscription, type Publication, type Gap, type GapReason, type Subscribed } from "./subscription.js";
export { HeraldError, type ClientErrorCode } from "./errors.js";
export {
  decide,
  plan,
  backoffDelay,
  waitDelay,
  attemptAfter,
  refreshDelay,
  tokenExpiresSoon,
  DEFAULT_BACKOFF,
  type BackoffOptions,
  type Decision,
  type DecideContext,
  type EndEvent,
  type ClosedReason,
  type WaitKind,
} from "./reconnect.js";
export { tokenTimes } from "./jwt.js";
