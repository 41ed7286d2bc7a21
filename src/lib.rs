//! stirscreen: STIR/SHAKEN verification and call screening.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod cert;
#[cfg(feature = "runtime")]
pub mod certrepo;
#[cfg(feature = "runtime")]
pub mod config;
#[cfg(feature = "runtime")]
pub mod fetch;
pub mod identity;
pub mod lab;
pub mod limits;
pub mod net;
pub mod passport;
#[cfg(feature = "runtime")]
pub mod pki;
pub mod sip;
pub mod time;
pub mod tn;
pub mod verify;
