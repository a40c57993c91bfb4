//! Packaging and developer chores of Agent System, behind `cargo xtask <command>`.
//!
//! The library holds what other crates and the tests call: [`images`] builds the container
//! images that `just up` ships and the harness runs; [`secrets`] creates the Redis passwords and
//! renders the env files and the ACL file from them, and rotates the services' password;
//! [`compose`] drives the compose deployment (`just up`, `restart`, `scale`, ...); [`k8s`]
//! creates the Kubernetes Secret; [`local`] runs the services as local processes (`just run`,
//! `just dev`); [`tools`] checks for (and installs) the host tools. The binary (`src/main.rs`)
//! maps the commands onto them and adds `bench` (the benchmark run that writes
//! `docs/benchmarks.md`), `bare-enqueue` (the bench-only minimal enqueue server the benchmark
//! measures as a ceiling) and `bare-consume` (the bench-only batched consumer the drains are
//! compared with).

pub mod compose;
pub mod images;
pub mod k8s;
pub mod local;
pub mod secrets;
pub mod tools;
