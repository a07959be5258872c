//! kinde-m2m-operator: manage Kinde machine-to-machine access declaratively.
//!
//! The library holds everything; `src/main.rs` only parses the command line and calls in.
//! The Kinde emulator is a separate crate (`crates/kinde-emulator`, a faithful Kinde
//! emulator for tests and local trial): this library never imports it; only `main.rs` and
//! the tests do (tests/boundaries.rs checks it).
#![forbid(unsafe_code)]

pub mod adoption;
pub mod check;
pub mod cli_env;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod export;
pub mod http;
pub mod identity;
pub mod kinde;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod rotate;
pub mod run;
pub mod secret;
pub mod status;
pub mod telemetry;
pub mod validation;
