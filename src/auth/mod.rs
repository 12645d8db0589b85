//! JWT verification and origin policy.
//!
//! The only module that names `jsonwebtoken`; everything else sees
//! [`Claims`] and [`TokenError`]. `jwks` parses key sets (pure), `fetch`
//! keeps a key set URL fresh (the only outbound HTTP in herald).

pub mod fetch;
pub mod jwks;
pub mod origin;
pub mod token;

pub use jwks::{JwksError, KeySet};
pub use origin::OriginPolicy;
pub use token::{Claims, KeyError, KeySummary, RemoteKeys, TokenError, Verifier};
