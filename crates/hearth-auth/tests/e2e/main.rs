//! End-to-end tests of the auth service: its router on a real loopback
//! listener, a real store in a temp dir, a real SMTP server (aiosmtpd) and
//! an independent JWT library (PyJWT). One test binary, several modules, so
//! the crate links once.

#![allow(clippy::unwrap_used)]

mod admin;
mod attacks;
mod common;
mod email;
mod flows;
mod pyjwt;
