//! kinde-m2m-operator: manage Kinde machine-to-machine access declaratively.
//!
//! The library holds everything; `src/main.rs` only parses the command line and calls in.
//! `emulator` is a separate product part (a faithful Kinde emulator for tests and local
//! trial): nothing outside `emulator` and `main.rs` may import it.
#![forbid(unsafe_code)]

pub mod conditions;
pub mod crd;
pub mod emulator;
pub mod kinde;
pub mod telemetry;
