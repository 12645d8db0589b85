//! JWT verification and origin policy.
//!
//! The only module that names `jsonwebtoken`; everything else sees
//! [`Claims`] and [`TokenError`].

pub mod origin;
pub mod token;

pub use origin::OriginPolicy;
pub use token::{Claims, KeyError, TokenError, Verifier};
