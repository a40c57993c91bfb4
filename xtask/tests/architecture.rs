//! The invariants of ARCHITECTURE.md that are about the code's shape, checked on the source
//! tree: which crate may depend on which, where key names are built, and that task state only
//! changes inside the Lua scripts.

use std::fs;
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    xtask::images::default_workspace_root()
}

/// The names under `[dependencies]` (not dev-dependencies) of a crate's manifest.
fn dependencies(manifest: &str) -> Vec<String> {
    let path = workspace_root().join(manifest);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let parsed: toml::Table = toml::from_str(&text).expect("a valid manifest");
    parsed
        .get("dependencies")
        .and_then(toml::Value::as_table)
        .map(|deps| deps.keys().cloned().collect())
        .unwrap_or_default()
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without its `#[cfg(test)]` module (tests may name keys in expected values).
fn production_part(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |at| &text[..at])
}

#[test]
fn taskq_knows_nothing_of_http_or_the_harness_and_the_services_never_depend_on_tools() {
    let forbidden_in_taskq = [
        "axum",
        "reqwest",
        "hyper",
        "tower",
        "tower-http",
        "http",
        "harness",
        "loadtests",
        "xtask",
    ];
    let taskq = dependencies("services/taskq/Cargo.toml");
    for name in forbidden_in_taskq {
        assert!(
            !taskq.iter().any(|d| d == name),
            "taskq depends on {name}: {taskq:?}"
        );
    }
    for service in [
        "services/orchestrator",
        "services/worker",
        "services/healthcheck",
    ] {
        let deps = dependencies(&format!("{service}/Cargo.toml"));
        for tool in ["harness", "loadtests", "xtask", "testkit"] {
            assert!(
                !deps.iter().any(|d| d == tool),
                "{service} depends on {tool} outside [dev-dependencies]: {deps:?}"
            );
        }
    }
}

#[test]
fn every_key_name_is_built_in_taskq_keys() {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in ["services", "harness", "loadtests", "xtask/src", "testkit"] {
        rust_files(&root.join(dir), &mut files);
    }
    let keys_module = root.join("services/taskq/src/keys.rs");
    // A key name is formatted as "<prefix>:task:<id>", "<prefix>:stream:p<n>", ...
    let shapes = [
        "}:task:",
        "\":task:",
        "}:stream:p",
        "\":stream:p",
        "}:idempotency:",
        "}:idem:",
        "}:workers\"",
        "}:retry\"",
        "}:dead\"",
    ];
    let mut offenders = Vec::new();
    for file in files.iter().filter(|f| **f != keys_module) {
        let text = fs::read_to_string(file).expect("readable source");
        for shape in shapes {
            if production_part(&text).contains(shape) {
                offenders.push(format!("{} formats a key ({shape})", file.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[test]
fn task_state_changes_only_inside_the_lua_scripts() {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in [
        "services/taskq/src",
        "services/orchestrator/src",
        "services/worker/src",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    let writes = [
        "HSET", "HDEL", "XADD", "XACK", "XDEL", "XCLAIM", "ZADD", "ZREM", "DEL", "EXPIRE",
    ];
    let mut offenders = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("readable source");
        for command in writes {
            if production_part(&text).contains(&format!("cmd(\"{command}\")")) {
                offenders.push(format!(
                    "{} sends {command} outside a script",
                    file.display()
                ));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}
