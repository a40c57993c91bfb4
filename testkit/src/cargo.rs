//! The release build of workspace binaries (cargo skips what is fresh).

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context;

/// A `cargo` command: the cargo that runs us (`CARGO`, same toolchain) or the one on the `PATH`.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `cargo build --release -p <package>...` in `workspace_root` (stdin closed; with `--quiet`
/// when `quiet`), e.g. of `orchestrator` and `worker` before they run as processes or go into
/// images. Fails when the build fails.
pub fn cargo_build_release(
    workspace_root: &Path,
    packages: &[&str],
    quiet: bool,
) -> anyhow::Result<()> {
    let mut args = vec!["build", "--release"];
    if quiet {
        args.push("--quiet");
    }
    for package in packages {
        args.extend(["-p", package]);
    }
    let status = cargo()
        .args(&args)
        .current_dir(workspace_root)
        .stdin(Stdio::null())
        .status()
        .context("running cargo build")?;
    anyhow::ensure!(
        status.success(),
        "cargo {} failed ({status})",
        args.iter()
            .filter(|arg| **arg != "--quiet")
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}
