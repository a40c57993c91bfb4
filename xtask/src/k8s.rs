//! `just k8s-secrets` and `just k8s-apply`: kubectl, driven thinly. What goes into the Secret is
//! rendered by [`secrets::k8s_secret_files`] (tested without a cluster); kubectl reads the values
//! from files (`--from-file`), so none is on a command line.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, ensure};

use crate::secrets::{self, K8S_NAMESPACE, K8S_SECRET, SecretsDir};
use crate::tools;

fn kubectl(args: &[&std::ffi::OsStr], stdout: Stdio) -> anyhow::Result<()> {
    let status = Command::new("kubectl")
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .status()
        .context("running kubectl")?;
    ensure!(status.success(), "kubectl failed ({status})");
    Ok(())
}

/// Creates the Secret `agent-system/agent-redis` (random passwords, `REDIS_URL`, the ACL file)
/// unless it exists; an existing one is left as it is.
pub fn create_secret(workspace_root: &Path) -> anyhow::Result<()> {
    if tools::succeeds(
        "kubectl",
        &["-n", K8S_NAMESPACE, "get", "secret", K8S_SECRET],
    ) {
        println!("k8s: Secret {K8S_SECRET} exists; left as it is (rotation: docs/deploy.md)");
        return Ok(());
    }
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let files = secrets::k8s_secret_files(
        &SecretsDir::new(tmp.path()),
        &workspace_root.join(secrets::ACL_TEMPLATE),
        &mut io::stdout().lock(),
    )?;
    let args = secrets::k8s_create_secret_args(&files);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    kubectl(&args, Stdio::null())?;
    let label = [
        "-n",
        K8S_NAMESPACE,
        "label",
        "secret",
        K8S_SECRET,
        "app.kubernetes.io/part-of=agent-system",
    ]
    .map(std::ffi::OsStr::new);
    kubectl(&label, Stdio::null())?;
    println!(
        "k8s: created Secret {K8S_SECRET} (Redis admin and agent passwords, REDIS_URL, ACL file)"
    );
    Ok(())
}

/// The namespace, then the Secret ([`create_secret`]), then every manifest of `k8s/`.
pub fn apply(workspace_root: &Path) -> anyhow::Result<()> {
    for (step, file) in [
        ("namespace", "k8s/00-namespace.yaml"),
        ("manifests", "k8s/"),
    ] {
        eprintln!("kubectl apply -f {file}");
        let path = workspace_root.join(file);
        kubectl(
            &["apply".as_ref(), "-f".as_ref(), path.as_os_str()],
            Stdio::inherit(),
        )?;
        if step == "namespace" {
            create_secret(workspace_root)?;
        }
    }
    Ok(())
}
