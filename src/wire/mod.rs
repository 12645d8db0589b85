//! Sans-IO wire formats: the byte-level contract of `PROTOCOL.md`.
//!
//! Nothing in here does I/O, reads a clock or spawns: every function takes
//! buffers from the caller and returns values or bytes, so the whole
//! contract is testable (and fuzzable) without sockets. Decoders borrow from
//! the input instead of allocating; encoders build each outgoing frame in one
//! allocation of exactly the right size.
//!
//! - [`msgpack`]: a strict, allocation-free MessagePack reader and small
//!   writer helpers shared by the formats below.
//! - [`topic`]: topic names and the `topics`/`pub` claim patterns.
//! - [`ws`]: RFC 6455 server-side framing (masked client frames in,
//!   unmasked pre-encoded frames out).
//! - [`client`]: the client protocol carried in WebSocket binary messages.
//! - [`close`]: the table of close codes (who is at fault, what a client
//!   should do next).
//! - [`feed`]: the length-prefixed TCP ingest protocol.

pub mod client;
pub mod close;
pub mod feed;
pub mod msgpack;
pub mod topic;
pub mod ws;
