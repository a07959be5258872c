//! End-to-end tests: the real binary against a real kube-apiserver, etcd,
//! kube-controller-manager and the Kinde emulator. One file per area; each exposes
//! `tests()`. See `tests/support/mod.rs` for the harness.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod apps;
mod chart;
mod connections;
mod crash;
mod crds;
mod edges;
mod failover;
mod gitops;
mod grants;
mod harness;
mod rbac;
mod rebuild;
mod release;
mod rotation;
mod trust;

fn main() -> std::process::ExitCode {
    let code = support::run(
        [
            harness::tests(),
            crds::tests(),
            apps::tests(),
            grants::tests(),
            gitops::tests(),
            release::tests(),
            crash::tests(),
            failover::tests(),
            rotation::tests(),
            edges::tests(),
            trust::tests(),
            chart::tests(),
            rbac::tests(),
            rebuild::tests(),
            connections::tests(),
        ]
        .into_iter()
        .flatten(),
    );
    crash::print_summary();
    code
}
