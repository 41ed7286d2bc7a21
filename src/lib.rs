//! stirscreen: STIR/SHAKEN verification and call screening.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod limits;
pub mod sip;
pub mod time;
