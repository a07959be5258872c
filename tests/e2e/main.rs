//! End-to-end tests: the real binary against a real kube-apiserver, etcd,
//! kube-controller-manager and the Kinde emulator. One file per area; each exposes
//! `tests()`. See `tests/support/mod.rs` for the harness.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod control_plane;
mod rotation;

fn main() -> std::process::ExitCode {
    support::run(
        [control_plane::tests(), rotation::tests()]
            .into_iter()
            .flatten(),
    )
}
