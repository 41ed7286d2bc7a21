//! The STIR core (sans-IO): the Identity header (RFC 8224), PASSporTs
//! (RFC 8225/8588, div, rcd), STI certificates and their paths (RFC 5280,
//! RFC 8226, ATIS-1000080), telephone numbers, and the verifier that puts
//! them together.

pub mod cert;
pub mod identity;
pub mod passport;
pub mod tn;
pub mod verify;
