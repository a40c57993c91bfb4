//! Packaging and developer chores of Agent System, behind `cargo xtask <command>`.
//!
//! The library holds what other crates and the tests call: [`images`] builds the container
//! images that `just up` ships and the harness runs; [`secrets`] creates the Redis passwords and
//! renders the env files and the ACL file from them, and rotates the services' password. The
//! binary (`src/main.rs`) adds the commands only developers run: `images`, `bench` (the benchmark
//! run that writes `docs/benchmarks.md`) and `bare-enqueue` (the bench-only minimal enqueue
//! server the benchmark measures as a ceiling).

pub mod images;
pub mod secrets;
