//! The Kubernetes manifests in `k8s/` parse and agree with the compose files in `compose/`.
//!
//! Both describe the same three services, so the names, images, ports, environment variables
//! (names and default values), the Redis persistence flags and the grace periods must match.
//! Every variable they give the orchestrator and the worker is a setting the binary declares
//! under its current name (no deprecated `*_MS` spelling), and its value parses with the
//! binary's own parser.
//! The KEDA triggers must name the streams and consumer group the `taskq` crate really uses.
//!
//! Redis authentication: in both, Redis loads the ACL file rendered from
//! `compose/redis-users.acl.template`, its health check authenticates through `REDISCLI_AUTH`,
//! and the services' `REDIS_URL` comes from a secret (compose: the env file `just up` writes;
//! Kubernetes: the Secret `just k8s-secrets` creates, never a committed one). The template gives
//! the services' user every command the queue protocol sends (checked against the Lua scripts
//! and `queue.rs`) and nothing beyond its key prefix. The real rendering (`xtask::secrets`, what
//! `just _redis-secrets` and `just k8s-secrets` run) writes into a temporary directory to check
//! what it writes and that it prints no password.
//! Needs no cluster and no Docker: the files are read as YAML.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

const NAMESPACE: &str = "agent-system";

/// Stands for a value read from a secret (compose env file or Kubernetes Secret): the two
/// deployments must take the same variables from secrets, whatever the secret values are.
const FROM_SECRET: &str = "<secret>";

/// The env files compose reads (written by `xtask::secrets::render`) and the variables in each;
/// `redis_secrets_are_created_once_consistent_and_never_printed` checks the files match.
const ENV_FILES: [(&str, &[&str]); 2] = [
    ("./secrets/services.env", &["REDIS_URL"]),
    ("./secrets/redis.env", &["REDISCLI_AUTH"]),
];

/// Where Redis reads its users, in both deployments.
const ACL_FILE: &str = "/etc/redis/acl/users.acl";

/// The Kubernetes Secret with the Redis credentials (`just k8s-secrets`).
const REDIS_SECRET: &str = "agent-redis";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness/ has a parent")
        .to_path_buf()
}

/// One document of a manifest file.
struct Object {
    file: PathBuf,
    value: Value,
}

impl Object {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
}

fn yaml_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, files);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
}

/// Every document of every `k8s/**/*.yaml`, in file order.
fn manifests() -> Vec<Object> {
    let mut files = Vec::new();
    yaml_files(&workspace_root().join("k8s"), &mut files);
    assert!(!files.is_empty(), "k8s/ holds no manifests");
    let mut objects = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).expect("readable manifest");
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", file.display()));
            if !value.is_null() {
                objects.push(Object {
                    file: file.clone(),
                    value,
                });
            }
        }
    }
    objects
}

fn object<'a>(objects: &'a [Object], kind: &str, name: &str) -> &'a Value {
    &objects
        .iter()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| panic!("k8s/ has no {kind} named {name}"))
        .value
}

/// The first container of a Deployment's or StatefulSet's pod template.
fn container<'a>(objects: &'a [Object], kind: &str, name: &str) -> &'a Value {
    let containers = &object(objects, kind, name)["spec"]["template"]["spec"]["containers"];
    let first = &containers[0];
    assert!(first.is_mapping(), "{kind} {name} has no container");
    first
}

/// `services.<service>` of `compose/<service>.yml`, and the whole file.
fn compose_file(service: &str) -> Value {
    let path = workspace_root().join(format!("compose/{service}.yml"));
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn compose_service(service: &str) -> Value {
    let file = compose_file(service);
    let value = file["services"][service].clone();
    assert!(
        value.is_mapping(),
        "compose/{service}.yml has no service {service}"
    );
    value
}

/// Resolves `${NAME:-default}` to its default, as compose does with NAME unset.
fn interpolate_defaults(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out += &rest[..start];
        let end = rest[start..]
            .find('}')
            .unwrap_or_else(|| panic!("unclosed ${{ in {text:?}"))
            + start;
        let inner = &rest[start + 2..end];
        let (_, default) = inner
            .split_once(":-")
            .unwrap_or_else(|| panic!("{text:?}: every compose variable needs a :- default"));
        out += default;
        rest = &rest[end + 1..];
    }
    out + rest
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => interpolate_defaults(s),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// `environment:` plus the variables of the `env_file:`s (their values as [`FROM_SECRET`]).
fn compose_env(service: &str) -> BTreeMap<String, String> {
    let environment = &compose_service(service)["environment"];
    let map = match environment {
        Value::Null => &serde_yaml::Mapping::new(),
        other => other
            .as_mapping()
            .unwrap_or_else(|| panic!("compose/{service}.yml: environment must be a mapping")),
    };
    let mut env: BTreeMap<String, String> =
        map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect();
    for file in compose_env_files(service) {
        let (_, names) = ENV_FILES
            .iter()
            .find(|(path, _)| *path == file)
            .unwrap_or_else(|| panic!("compose/{service}.yml reads an unknown env file {file}"));
        for name in *names {
            let clash = env.insert((*name).to_owned(), FROM_SECRET.to_owned());
            assert!(
                clash.is_none(),
                "compose/{service}.yml sets {name} in both environment and {file}"
            );
        }
    }
    env
}

fn compose_env_files(service: &str) -> Vec<String> {
    compose_service(service)["env_file"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(scalar)
        .collect()
}

/// Whether an env var comes from an optional key of a Secret: the Redis Cluster's keys, which
/// only a Secret made for the cluster holds ([`cluster_env`]).
fn optional_secret(var: &Value) -> bool {
    var["valueFrom"]["secretKeyRef"]["optional"].as_bool() == Some(true)
}

/// Names of a container's env vars from optional Secret keys.
fn cluster_env(container: &Value) -> BTreeSet<String> {
    container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter(|var| optional_secret(var))
        .map(|var| scalar(&var["name"]))
        .collect()
}

/// Names and resolved values of a container's environment (`env` and `envFrom`), but the
/// optional Secret keys of the Redis Cluster ([`cluster_env`]).
fn k8s_env(objects: &[Object], container: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container["env"].as_sequence().into_iter().flatten() {
        if optional_secret(var) {
            continue;
        }
        let name = scalar(&var["name"]);
        let value = if let Some(value) = var.get("value") {
            scalar(value)
        } else if let Some(reference) = var["valueFrom"].get("configMapKeyRef") {
            let config = object(objects, "ConfigMap", &scalar(&reference["name"]));
            scalar(&config["data"][scalar(&reference["key"]).as_str()])
        } else if var["valueFrom"].get("secretKeyRef").is_some() {
            FROM_SECRET.to_owned()
        } else {
            panic!("env var {name} has neither value nor a ConfigMap/Secret reference")
        };
        env.insert(name, value);
    }
    for source in container["envFrom"].as_sequence().into_iter().flatten() {
        let reference = source
            .get("configMapRef")
            .expect("envFrom: only ConfigMaps (a Secret's keys are not in k8s/)");
        let data = &object(objects, "ConfigMap", &scalar(&reference["name"]))["data"];
        for (k, v) in data.as_mapping().into_iter().flatten() {
            env.insert(scalar(k), scalar(v));
        }
    }
    env
}

/// `(secret name, key)` of a container's env var taken from a Secret.
fn secret_ref(container: &Value, var: &str) -> (String, String) {
    let reference = container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == var)
        .and_then(|v| v["valueFrom"].get("secretKeyRef"))
        .unwrap_or_else(|| panic!("{var} must come from a secretKeyRef"));
    (scalar(&reference["name"]), scalar(&reference["key"]))
}

fn port_of_addr(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} is not host:port"))
}

/// Container side of every compose `ports:` entry ("8001:8000" → 8000).
fn compose_target_ports(service: &str) -> Vec<u16> {
    compose_service(service)["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|p| port_of_addr(&scalar(p)))
        .collect()
}

fn container_ports(container: &Value) -> BTreeMap<String, u16> {
    container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|p| {
            let port = p["containerPort"].as_u64().expect("numeric containerPort") as u16;
            (scalar(&p["name"]), port)
        })
        .collect()
}

/// A probe's or Service's port (number or name) resolved against the container's ports.
fn resolve_port(container: &Value, port: &Value) -> u16 {
    match port {
        Value::Number(n) => n.as_u64().expect("port number") as u16,
        Value::String(name) => *container_ports(container)
            .get(name)
            .unwrap_or_else(|| panic!("no container port named {name}")),
        other => panic!("bad port {other:?}"),
    }
}

fn compose_image(service: &str) -> String {
    scalar(&compose_service(service)["image"])
}

fn compose_duration(service: &str, field: &str) -> Duration {
    let text = scalar(&compose_service(service)[field]);
    humantime::parse_duration(&text)
        .unwrap_or_else(|e| panic!("compose/{service}.yml {field} {text:?}: {e}"))
}

#[test]
fn every_manifest_parses_with_kind_name_and_the_agent_namespace() {
    let objects = manifests();

    for o in &objects {
        let where_ = o.file.display();
        assert!(o.value["apiVersion"].is_string(), "{where_}: no apiVersion");
        assert!(!o.kind().is_empty(), "{where_}: no kind");
        assert!(!o.name().is_empty(), "{where_}: a {} has no name", o.kind());
        if o.kind() == "Namespace" {
            assert_eq!(o.name(), NAMESPACE, "{where_}");
        } else {
            assert_eq!(
                o.value["metadata"]["namespace"].as_str(),
                Some(NAMESPACE),
                "{where_}: {} {} must be in namespace {NAMESPACE}",
                o.kind(),
                o.name()
            );
        }
    }
    let kinds: BTreeSet<&str> = objects.iter().map(Object::kind).collect();
    for kind in [
        "Namespace",
        "ConfigMap",
        "StatefulSet",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "ScaledObject",
        "TriggerAuthentication",
    ] {
        assert!(kinds.contains(kind), "k8s/ has no {kind}; found {kinds:?}");
    }
}

#[test]
fn services_carry_the_compose_names_on_the_shared_network() {
    let objects = manifests();

    assert_eq!(
        compose_service("redis")["container_name"].as_str(),
        Some("agent-redis")
    );
    assert_eq!(
        compose_service("orchestrator")["container_name"].as_str(),
        Some("agent-orchestrator")
    );
    assert!(
        compose_service("worker").get("container_name").is_none(),
        "the worker scales, so it must not have a fixed container_name"
    );
    for service in ["redis", "orchestrator", "worker"] {
        let network = &compose_file(service)["networks"]["default"];
        assert_eq!(
            network["name"].as_str(),
            Some("agent-system-net"),
            "{service}"
        );
        assert_eq!(network["external"].as_bool(), Some(true), "{service}");
    }
    object(&objects, "StatefulSet", "agent-redis");
    object(&objects, "Service", "agent-redis");
    object(&objects, "Deployment", "agent-orchestrator");
    object(&objects, "Service", "agent-orchestrator");
    object(&objects, "Deployment", "agent-worker");
}

#[test]
fn both_run_the_locally_built_images() {
    let objects = manifests();

    for (service, kind, name) in [
        ("redis", "StatefulSet", "agent-redis"),
        ("orchestrator", "Deployment", "agent-orchestrator"),
        ("worker", "Deployment", "agent-worker"),
    ] {
        let k8s_image = scalar(&container(&objects, kind, name)["image"]);
        assert_eq!(compose_image(service), k8s_image, "{service} image");
        assert_eq!(k8s_image, format!("{name}:latest"));
    }
}

#[test]
fn container_ports_match_the_compose_ports() {
    let objects = manifests();

    let redis = container(&objects, "StatefulSet", "agent-redis");
    assert_eq!(compose_target_ports("redis"), vec![6379]);
    assert_eq!(container_ports(redis).get("redis"), Some(&6379));
    let redis_service = &object(&objects, "Service", "agent-redis")["spec"]["ports"][0];
    assert_eq!(redis_service["port"].as_u64(), Some(6379));
    assert_eq!(resolve_port(redis, &redis_service["targetPort"]), 6379);

    let orchestrator = container(&objects, "Deployment", "agent-orchestrator");
    assert_eq!(compose_target_ports("orchestrator"), vec![8000]);
    assert_eq!(
        port_of_addr(&compose_env("orchestrator")["LISTEN_ADDR"]),
        8000
    );
    assert_eq!(container_ports(orchestrator).get("http"), Some(&8000));
    let api_service = &object(&objects, "Service", "agent-orchestrator")["spec"]["ports"][0];
    assert_eq!(api_service["port"].as_u64(), Some(8000));
    assert_eq!(resolve_port(orchestrator, &api_service["targetPort"]), 8000);

    let worker = container(&objects, "Deployment", "agent-worker");
    let metrics = port_of_addr(&compose_env("worker")["METRICS_ADDR"]);
    assert_eq!(metrics, 9000);
    assert!(
        compose_target_ports("worker").is_empty(),
        "a scaled worker must not publish host ports"
    );
    assert_eq!(container_ports(worker).get("metrics"), Some(&metrics));
}

#[test]
fn environment_names_and_defaults_agree_per_service() {
    let objects = manifests();

    for (service, name) in [
        ("orchestrator", "agent-orchestrator"),
        ("worker", "agent-worker"),
    ] {
        let compose = compose_env(service);
        let k8s = k8s_env(&objects, container(&objects, "Deployment", name));
        assert_eq!(
            compose.keys().collect::<Vec<_>>(),
            k8s.keys().collect::<Vec<_>>(),
            "{service}: environment variable names differ between compose and k8s"
        );
        assert_eq!(compose, k8s, "{service}: environment values differ");
        assert_eq!(
            compose["REDIS_URL"], FROM_SECRET,
            "{service}: REDIS_URL carries a password"
        );
        assert_eq!(compose["LOG_FORMAT"], "json");
    }
}

/// Checks one deployment's environment for a service: every variable (but `RUST_LOG`, read by
/// the log filter) is a setting of `command` under its current name, not one of the `renamed`
/// old spellings, and `load` accepts the values (those from secrets left out) as flags.
fn check_settings<C>(
    what: &str,
    env: &BTreeMap<String, String>,
    renamed: &[taskq::support::Renamed<C>],
    load: impl Fn(Vec<String>) -> Result<Vec<taskq::support::Deprecated>, String>,
) where
    C: clap::CommandFactory,
{
    let command = C::command();
    let mut args = vec![what.to_owned()];
    for (name, value) in env {
        assert!(
            !renamed.iter().any(|r| r.old_env == name),
            "{what}: {name} is a deprecated name"
        );
        if name == "RUST_LOG" {
            continue;
        }
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_env() == Some(OsStr::new(name)))
            .unwrap_or_else(|| panic!("{what}: {name} is not a setting of the binary"));
        if value != FROM_SECRET {
            args.push(format!(
                "--{}",
                arg.get_long().expect("every setting has a flag")
            ));
            args.push(value.clone());
        }
    }
    let deprecated = load(args).unwrap_or_else(|err| panic!("{what}: {err}"));
    assert!(deprecated.is_empty(), "{what}: {deprecated:?}");
}

#[test]
fn every_variable_is_a_current_setting_and_its_value_parses() {
    let objects = manifests();

    let orchestrator = |args: Vec<String>| {
        orchestrator::config::Config::try_load_from(args)
            .map(|(_, deprecated)| deprecated)
            .map_err(|err| err.to_string())
    };
    let worker = |args: Vec<String>| {
        let (config, deprecated) =
            worker::config::Config::try_load_from(args).map_err(|err| err.to_string())?;
        config.validate().map_err(|err| err.to_string())?;
        Ok(deprecated)
    };
    let k8s = |name| k8s_env(&objects, container(&objects, "Deployment", name));
    check_settings(
        "compose orchestrator",
        &compose_env("orchestrator"),
        orchestrator::config::RENAMED,
        orchestrator,
    );
    check_settings(
        "k8s orchestrator",
        &k8s("agent-orchestrator"),
        orchestrator::config::RENAMED,
        orchestrator,
    );
    check_settings(
        "compose worker",
        &compose_env("worker"),
        worker::config::RENAMED,
        worker,
    );
    check_settings(
        "k8s worker",
        &k8s("agent-worker"),
        worker::config::RENAMED,
        worker,
    );
    // The ConfigMap holds no deprecated name either, read or not.
    let config = &object(&objects, "ConfigMap", "agent-config")["data"];
    for (key, _) in config.as_mapping().expect("ConfigMap data") {
        let key = scalar(key);
        assert!(
            !key.ends_with("_MS"),
            "ConfigMap agent-config: {key} is a deprecated name"
        );
    }
}

#[test]
fn redis_runs_with_aof_always_on_persistent_storage_in_both() {
    let objects = manifests();

    let compose_command: Vec<String> = compose_service("redis")["command"]
        .as_sequence()
        .expect("compose redis command in exec form")
        .iter()
        .map(scalar)
        .collect();
    let redis = container(&objects, "StatefulSet", "agent-redis");
    let k8s_command: Vec<String> = ["command", "args"]
        .iter()
        .flat_map(|field| redis[*field].as_sequence().cloned().unwrap_or_default())
        .map(|v| scalar(&v))
        .collect();
    assert_eq!(compose_command, k8s_command, "redis command line");
    let joined = compose_command.join(" ");
    assert!(joined.contains("--appendonly yes"), "{joined}");
    assert!(joined.contains("--appendfsync always"), "{joined}");
    assert!(joined.contains("--dir /data"), "{joined}");

    let compose_volumes: Vec<String> = compose_service("redis")["volumes"]
        .as_sequence()
        .expect("redis volumes")
        .iter()
        .map(scalar)
        .collect();
    assert_eq!(compose_volumes[0], "redis-data:/data");
    assert_eq!(
        compose_file("redis")["volumes"]["redis-data"]["name"].as_str(),
        Some("agent-redis-data")
    );
    let statefulset = object(&objects, "StatefulSet", "agent-redis");
    let claim = &statefulset["spec"]["volumeClaimTemplates"][0];
    let mount = &redis["volumeMounts"][0];
    assert_eq!(mount["mountPath"].as_str(), Some("/data"));
    assert_eq!(
        mount["name"], claim["metadata"]["name"],
        "mount uses the PVC"
    );
}

/// The command line of a container (`command` then `args`), as words.
fn k8s_command_line(container: &Value) -> Vec<String> {
    ["command", "args"]
        .iter()
        .flat_map(|field| container[*field].as_sequence().cloned().unwrap_or_default())
        .map(|v| scalar(&v))
        .collect()
}

/// `--flag value` pairs of a redis-server command line (the config file argument left out).
fn redis_flags(command: &[String]) -> BTreeMap<String, String> {
    let at = command
        .iter()
        .position(|word| word.starts_with("--"))
        .unwrap_or(command.len());
    command[at..]
        .chunks(2)
        .map(|pair| (pair[0].clone(), pair.get(1).cloned().unwrap_or_default()))
        .collect()
}

#[test]
fn the_redis_cluster_is_the_same_in_both_and_the_services_get_its_keys_from_the_secret() {
    let objects = manifests();
    let mut compose = compose_file("redis-cluster");
    // The nodes share their settings through a YAML anchor and `<<` merge keys.
    compose
        .apply_merge()
        .expect("merge keys of compose/redis-cluster.yml");
    let nodes: BTreeMap<String, Value> = compose["services"]
        .as_mapping()
        .expect("compose/redis-cluster.yml services")
        .iter()
        .map(|(name, service)| (scalar(name), service.clone()))
        .collect();

    // compose: the nodes xtask forms and names in services.env, each on its own volume.
    let containers: BTreeSet<String> = nodes
        .values()
        .map(|service| scalar(&service["container_name"]))
        .collect();
    let expected: BTreeSet<String> = xtask::compose::cluster_nodes().into_iter().collect();
    assert_eq!(containers, expected, "compose/redis-cluster.yml nodes");
    let xtask::secrets::RedisTopology::Cluster {
        nodes: urls,
        shards,
    } = xtask::compose::Topology::Cluster.services()
    else {
        panic!("the compose cluster topology is a cluster");
    };
    assert_eq!(shards, xtask::compose::CLUSTER_SHARDS);
    assert_eq!(
        urls.iter()
            .map(|n| n.trim_end_matches(":6379").to_owned())
            .collect::<BTreeSet<_>>(),
        expected,
        "services.env names every node"
    );
    let mut volumes = BTreeSet::new();
    for (name, service) in &nodes {
        let mounts: Vec<String> = service["volumes"]
            .as_sequence()
            .expect("node volumes")
            .iter()
            .map(scalar)
            .collect();
        let data = mounts
            .iter()
            .find_map(|m| m.strip_suffix(":/data"))
            .unwrap_or_else(|| panic!("{name} keeps no /data volume"));
        assert!(volumes.insert(data.to_owned()), "{name} shares its volume");
        assert!(mounts.contains(&"./secrets/redis-acl:/etc/redis/acl:ro".to_owned()));
        assert!(
            mounts.contains(&"./secrets/redis-cluster.conf:/etc/redis/cluster.conf:ro".to_owned())
        );
    }

    // The same node flags in both (the pods also announce their DNS names).
    let compose_command: Vec<String> = nodes.values().next().expect("a node")["command"]
        .as_sequence()
        .expect("exec form")
        .iter()
        .map(scalar)
        .collect();
    assert_eq!(
        compose_command[1], "/etc/redis/cluster.conf",
        "masterauth from the file"
    );
    let redis = container(&objects, "StatefulSet", "agent-redis-cluster");
    let k8s_command = k8s_command_line(redis);
    let mut k8s_flags = redis_flags(&k8s_command);
    for k8s_only in [
        "--cluster-announce-hostname",
        "--cluster-preferred-endpoint-type",
    ] {
        assert!(k8s_flags.remove(k8s_only).is_some(), "{k8s_only}");
    }
    let compose_flags = redis_flags(&compose_command);
    assert_eq!(compose_flags, k8s_flags, "cluster node flags");
    assert_eq!(compose_flags["--cluster-enabled"], "yes");
    assert_eq!(compose_flags["--appendfsync"], "always");
    assert_eq!(
        redis_flags(&redis_command_lines(&objects).0)["--aclfile"],
        compose_flags["--aclfile"]
    );

    // k8s: the StatefulSet runs every node the Secret names, the Job forms exactly those.
    let statefulset = object(&objects, "StatefulSet", "agent-redis-cluster");
    let pods = statefulset["spec"]["replicas"].as_u64().expect("replicas") as usize;
    assert_eq!(pods, nodes.len(), "as many pods as compose nodes");
    let service = scalar(&statefulset["spec"]["serviceName"]);
    let headless = object(&objects, "Service", &service);
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));
    let pod_names: Vec<String> = (0..pods)
        .map(|pod| format!("agent-redis-cluster-{pod}.{service}:6379"))
        .collect();
    let xtask::secrets::RedisTopology::Cluster {
        nodes: secret_nodes,
        shards,
    } = xtask::k8s::cluster_topology()
    else {
        panic!("the k8s cluster topology is a cluster");
    };
    assert_eq!(
        secret_nodes, pod_names,
        "REDIS_CLUSTER_URLS names every pod"
    );
    let job = object(&objects, "Job", "agent-redis-cluster-init");
    let form = &job["spec"]["template"]["spec"]["containers"][0];
    let form_command = k8s_command_line(form);
    let named: Vec<String> = form_command
        .iter()
        .filter(|word| word.ends_with(":6379"))
        .cloned()
        .collect();
    assert_eq!(named, pod_names, "the Job forms every pod");
    assert_eq!(
        flag_value(&form_command, "--cluster-replicas"),
        Some((pods / shards as usize - 1).to_string().as_str())
    );

    // The services read the cluster's keys from the Secret, optionally (a single Redis's
    // Secret has none), and the values xtask puts there are settings they accept.
    let tmp = tempfile::tempdir().expect("tempdir");
    let files = xtask::secrets::k8s_secret_files(
        &xtask::secrets::SecretsDir::new(tmp.path()),
        &acl_template_path(),
        &xtask::k8s::cluster_topology(),
        &mut Vec::new(),
    )
    .expect("the cluster's Secret");
    let value = |key: &str| {
        let file = files
            .iter()
            .find(|f| f.key == key)
            .unwrap_or_else(|| panic!("{key}"));
        fs::read_to_string(&file.path).expect("value")
    };
    for (name, wanted) in [
        (
            "agent-orchestrator",
            &["QUEUE_PARTITIONS", "REDIS_CLUSTER_URLS", "REPLICA_ACKS"][..],
        ),
        (
            "agent-worker",
            &["QUEUE_PARTITIONS", "REDIS_CLUSTER_URLS"][..],
        ),
    ] {
        let deployment = container(&objects, "Deployment", name);
        let optional = cluster_env(deployment);
        assert_eq!(
            optional.iter().map(String::as_str).collect::<Vec<_>>(),
            wanted,
            "{name}: the optional Secret keys"
        );
        for var in &optional {
            assert_eq!(
                secret_ref(deployment, var),
                (REDIS_SECRET.to_owned(), var.clone())
            );
            value(var);
        }
    }
    let settings = |names: &[&str]| -> BTreeMap<String, String> {
        names
            .iter()
            .map(|name| {
                let v = if *name == "REDIS_CLUSTER_URLS" {
                    FROM_SECRET.to_owned()
                } else {
                    value(name)
                };
                ((*name).to_owned(), v)
            })
            .collect()
    };
    check_settings(
        "k8s cluster orchestrator",
        &settings(&["QUEUE_PARTITIONS", "REDIS_CLUSTER_URLS", "REPLICA_ACKS"]),
        orchestrator::config::RENAMED,
        |args| {
            orchestrator::config::Config::try_load_from(args)
                .map(|(_, deprecated)| deprecated)
                .map_err(|err| err.to_string())
        },
    );
    assert_eq!(value("QUEUE_PARTITIONS"), shards.to_string());
    assert_eq!(value("REPLICA_ACKS"), "1");
    let conf = value("redis-cluster.conf");
    assert!(conf.starts_with("masterauth "), "the nodes' config file");
    let volumes = &statefulset["spec"]["template"]["spec"]["volumes"];
    let mounted = volumes
        .as_sequence()
        .expect("volumes")
        .iter()
        .any(|v| v["secret"]["items"][0]["key"] == "redis-cluster.conf");
    assert!(
        mounted,
        "the StatefulSet mounts redis-cluster.conf from the Secret"
    );
}

/// Redis's command line in compose and in the StatefulSet.
fn redis_command_lines(objects: &[Object]) -> (Vec<String>, Vec<String>) {
    let compose = compose_service("redis")["command"]
        .as_sequence()
        .expect("compose redis command in exec form")
        .iter()
        .map(scalar)
        .collect();
    let redis = container(objects, "StatefulSet", "agent-redis");
    let k8s = ["command", "args"]
        .iter()
        .flat_map(|field| redis[*field].as_sequence().cloned().unwrap_or_default())
        .map(|v| scalar(&v))
        .collect();
    (compose, k8s)
}

/// The word after `flag` on a command line.
fn flag_value<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    let at = command.iter().position(|word| word == flag)?;
    command.get(at + 1).map(String::as_str)
}

/// Bytes of a Redis memory size (`1gb` = 2^30, `1g` = 10^9, as redis.conf reads them).
fn redis_bytes(text: &str) -> u64 {
    let lower = text.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit: u64 = match &lower[digits.len()..] {
        "" | "b" => 1,
        "k" => 1_000,
        "kb" => 1 << 10,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        other => panic!("unknown Redis memory unit {other:?} in {text:?}"),
    };
    digits.parse::<u64>().expect("a number") * unit
}

/// Bytes of a Kubernetes memory quantity (`512Mi`, `1Gi`, `1G`).
fn k8s_bytes(text: &str) -> u64 {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit: u64 = match &text[digits.len()..] {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        other => panic!("unknown Kubernetes memory unit {other:?} in {text:?}"),
    };
    digits.parse::<u64>().expect("a number") * unit
}

#[test]
fn item_11_redis_refuses_writes_at_maxmemory_instead_of_growing_until_killed() {
    let objects = manifests();
    let (compose, k8s) = redis_command_lines(&objects);

    for (name, command) in [("compose", &compose), ("k8s", &k8s)] {
        assert_eq!(
            flag_value(command, "--maxmemory-policy"),
            Some("noeviction"),
            "{name}: evicting would drop tasks; Redis must refuse writes instead: {command:?}"
        );
    }
    let compose_max = flag_value(&compose, "--maxmemory").expect("compose: --maxmemory");
    assert_eq!(
        flag_value(&k8s, "--maxmemory"),
        Some(compose_max),
        "compose and k8s agree on maxmemory"
    );
    // The pod's limit leaves room above maxmemory for the AOF rewrite's copy-on-write, client
    // buffers and fragmentation; otherwise the kernel kills Redis before Redis refuses a write.
    let limit = container(&objects, "StatefulSet", "agent-redis")["resources"]["limits"]["memory"]
        .as_str()
        .expect("the Redis pod has a memory limit");
    assert!(
        redis_bytes(compose_max) * 4 <= k8s_bytes(limit) * 3,
        "maxmemory {compose_max} must be at most 3/4 of the pod's memory limit {limit}"
    );
}

#[test]
fn every_redis_has_the_stream_node_size_the_queue_is_tuned_for() {
    let objects = manifests();
    let (compose, k8s) = redis_command_lines(&objects);
    let cluster = k8s_command_line(container(&objects, "StatefulSet", "agent-redis-cluster"));
    // (compose's cluster nodes carry the k8s cluster's flags: see the cluster test above)
    let [flag, value] = taskq::keys::REDIS_TUNING_ARGS;
    for (name, command) in [
        ("compose", &compose),
        ("k8s", &k8s),
        ("k8s cluster", &cluster),
    ] {
        assert_eq!(
            flag_value(command, flag),
            Some(value),
            "{name}: {flag} as in taskq::keys::REDIS_TUNING_ARGS: {command:?}"
        );
    }
}

#[test]
fn health_checks_use_healthz_and_readyz() {
    let objects = manifests();

    let orchestrator = container(&objects, "Deployment", "agent-orchestrator");
    let liveness = &orchestrator["livenessProbe"]["httpGet"];
    let readiness = &orchestrator["readinessProbe"]["httpGet"];
    assert_eq!(liveness["path"].as_str(), Some("/healthz"));
    assert_eq!(readiness["path"].as_str(), Some("/readyz"));
    assert_eq!(resolve_port(orchestrator, &liveness["port"]), 8000);
    assert_eq!(resolve_port(orchestrator, &readiness["port"]), 8000);

    let worker = container(&objects, "Deployment", "agent-worker");
    let liveness = &worker["livenessProbe"]["httpGet"];
    assert_eq!(liveness["path"].as_str(), Some("/healthz"));
    assert_eq!(resolve_port(worker, &liveness["port"]), 9000);

    for (service, binary) in [
        ("redis", "redis-cli"),
        ("orchestrator", "/usr/local/bin/orchestrator"),
        ("worker", "/usr/local/bin/worker"),
    ] {
        let test: Vec<String> = compose_service(service)["healthcheck"]["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{service}: healthcheck test in exec form"))
            .iter()
            .map(scalar)
            .collect();
        assert_eq!(
            test[0], "CMD",
            "{service}: exec form, the images have no shell"
        );
        assert_eq!(test[1], binary, "{service}");
    }
    let compose_ping: Vec<String> = compose_service("redis")["healthcheck"]["test"]
        .as_sequence()
        .expect("exec form")
        .iter()
        .skip(1)
        .map(scalar)
        .collect();
    let redis = container(&objects, "StatefulSet", "agent-redis");
    let k8s_ping: Vec<String> = redis["readinessProbe"]["exec"]["command"]
        .as_sequence()
        .expect("redis readiness exec")
        .iter()
        .map(scalar)
        .collect();
    assert_eq!(compose_ping, k8s_ping, "the same Redis check in both");
    assert_eq!(
        compose_ping,
        ["redis-cli", "-e", "ping"],
        "without -e, redis-cli exits 0 on NOAUTH or LOADING and the check passes on a refusal"
    );
}

#[test]
fn grace_periods_outlast_the_worker_drain() {
    let objects = manifests();

    // The grace, then the time interrupted executions get to be recorded.
    let flush = worker::runner::INTERRUPTED_FLUSH;
    let compose_drain = humantime::parse_duration(&compose_env("worker")["SHUTDOWN_GRACE"])
        .expect("SHUTDOWN_GRACE is a humantime duration")
        + flush;
    let compose_grace = compose_duration("worker", "stop_grace_period");
    assert!(
        compose_grace > compose_drain,
        "compose stop_grace_period {compose_grace:?} must exceed the drain of {compose_drain:?}"
    );

    let worker = object(&objects, "Deployment", "agent-worker");
    let k8s_grace_s = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("worker terminationGracePeriodSeconds");
    let k8s_drain = humantime::parse_duration(
        &k8s_env(&objects, container(&objects, "Deployment", "agent-worker"))["SHUTDOWN_GRACE"],
    )
    .expect("SHUTDOWN_GRACE is a humantime duration")
        + flush;
    assert!(
        Duration::from_secs(k8s_grace_s) > k8s_drain,
        "terminationGracePeriodSeconds {k8s_grace_s} must exceed the drain of {k8s_drain:?}"
    );
    assert_eq!(Duration::from_secs(k8s_grace_s), compose_grace);

    for (service, kind, name) in [
        ("redis", "StatefulSet", "agent-redis"),
        ("orchestrator", "Deployment", "agent-orchestrator"),
    ] {
        let k8s = object(&objects, kind, name)["spec"]["template"]["spec"]
            ["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} terminationGracePeriodSeconds"));
        assert_eq!(
            Duration::from_secs(k8s),
            compose_duration(service, "stop_grace_period"),
            "{service}"
        );
    }
}

#[test]
fn selectors_match_the_pod_labels_they_target() {
    let objects = manifests();

    let pod_labels: Vec<(&str, &Value)> = objects
        .iter()
        .filter(|o| matches!(o.kind(), "Deployment" | "StatefulSet"))
        .map(|o| (o.name(), &o.value["spec"]["template"]["metadata"]["labels"]))
        .collect();
    let selects = |selector: &Value, labels: &Value| {
        selector
            .as_mapping()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };
    for o in &objects {
        let selector = match o.kind() {
            "Deployment" | "StatefulSet" | "PodDisruptionBudget" => {
                &o.value["spec"]["selector"]["matchLabels"]
            }
            "Service" => &o.value["spec"]["selector"],
            _ => continue,
        };
        let targets: Vec<&str> = pod_labels
            .iter()
            .filter(|(_, labels)| selects(selector, labels))
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(
            targets,
            vec![o.name()],
            "{} {} must select exactly the pods of the workload of the same name",
            o.kind(),
            o.name()
        );
    }
}

#[test]
fn keda_scales_the_worker_on_every_priority_stream() {
    let objects = manifests();
    let scaled = object(&objects, "ScaledObject", "agent-worker");
    let keys = taskq::Keys::default();

    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"].as_str(),
        Some("agent-worker")
    );
    object(&objects, "Deployment", "agent-worker");
    let triggers = scaled["spec"]["triggers"].as_sequence().expect("triggers");
    let streams: BTreeSet<String> = triggers
        .iter()
        .map(|t| {
            assert_eq!(t["type"].as_str(), Some("redis-streams"));
            let metadata = &t["metadata"];
            assert_eq!(
                metadata["consumerGroup"].as_str(),
                Some(taskq::keys::CONSUMER_GROUP)
            );
            assert_eq!(
                metadata["address"].as_str(),
                Some("agent-redis.agent-system.svc.cluster.local:6379"),
                "KEDA runs in its own namespace, so the Redis address must be fully qualified"
            );
            scalar(&metadata["stream"])
        })
        .collect();
    let expected: BTreeSet<String> = keys.streams().into_iter().collect();
    assert_eq!(streams, expected, "one trigger per priority stream");
}

fn redis_command_line() -> String {
    compose_service("redis")["command"]
        .as_sequence()
        .expect("exec form")
        .iter()
        .map(scalar)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn redis_requires_passwords_from_secrets_in_both_and_no_secret_is_committed() {
    let objects = manifests();

    // Redis loads its users from the ACL file and keeps protected mode on.
    let command = redis_command_line();
    assert!(
        command.contains(&format!("--aclfile {ACL_FILE}")),
        "{command}"
    );
    assert!(!command.contains("--protected-mode no"), "{command}");
    let acl_dir = Path::new(ACL_FILE)
        .parent()
        .expect("dir")
        .to_str()
        .expect("utf-8");
    assert!(
        compose_service("redis")["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .map(scalar)
            .any(|v| v == format!("./secrets/redis-acl:{acl_dir}:ro")),
        "compose mounts the rendered ACL directory read-only"
    );
    assert_eq!(compose_env_files("redis"), ["./secrets/redis.env"]);
    assert_eq!(compose_env("redis")["REDISCLI_AUTH"], FROM_SECRET);

    let statefulset = object(&objects, "StatefulSet", "agent-redis");
    let redis = container(&objects, "StatefulSet", "agent-redis");
    let mount = redis["volumeMounts"]
        .as_sequence()
        .expect("mounts")
        .iter()
        .find(|m| m["mountPath"] == acl_dir)
        .unwrap_or_else(|| panic!("the Redis pod mounts {acl_dir}"));
    let volume = statefulset["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert_eq!(volume["secret"]["secretName"].as_str(), Some(REDIS_SECRET));
    assert_eq!(
        volume["secret"]["items"][0]["key"].as_str(),
        Some("users.acl")
    );
    assert_eq!(
        volume["secret"]["items"][0]["path"].as_str(),
        Some("users.acl")
    );
    assert_eq!(
        secret_ref(redis, "REDISCLI_AUTH"),
        (REDIS_SECRET.to_owned(), "REDISCLI_AUTH".to_owned())
    );

    // The services' REDIS_URL comes from a secret, never from the manifests or compose files.
    assert!(
        objects.iter().all(|o| o.kind() != "Secret"),
        "k8s/ must not hold a Secret: its passwords would be public and `kubectl apply` would \
         overwrite the real one (`just k8s-secrets` creates it)"
    );
    for (service, name) in [
        ("orchestrator", "agent-orchestrator"),
        ("worker", "agent-worker"),
    ] {
        assert_eq!(compose_env_files(service), ["./secrets/services.env"]);
        assert_eq!(
            secret_ref(container(&objects, "Deployment", name), "REDIS_URL"),
            (REDIS_SECRET.to_owned(), "REDIS_URL".to_owned())
        );
    }

    // KEDA authenticates as the same user, from the same Secret.
    let auth = object(&objects, "TriggerAuthentication", REDIS_SECRET);
    let refs: BTreeMap<String, (String, String)> = auth["spec"]["secretTargetRef"]
        .as_sequence()
        .expect("secretTargetRef")
        .iter()
        .map(|r| {
            (
                scalar(&r["parameter"]),
                (scalar(&r["name"]), scalar(&r["key"])),
            )
        })
        .collect();
    assert_eq!(
        refs,
        BTreeMap::from([
            (
                "username".to_owned(),
                (REDIS_SECRET.to_owned(), "REDIS_USERNAME".to_owned())
            ),
            (
                "password".to_owned(),
                (REDIS_SECRET.to_owned(), "REDIS_PASSWORD".to_owned())
            ),
        ])
    );
    let scaled = object(&objects, "ScaledObject", "agent-worker");
    for trigger in scaled["spec"]["triggers"].as_sequence().expect("triggers") {
        assert_eq!(
            trigger["authenticationRef"]["name"].as_str(),
            Some(REDIS_SECRET),
            "every KEDA trigger authenticates"
        );
    }

    // Every key the pods read is one `just k8s-secrets` (xtask::k8s) creates, with the REDIS_URL
    // compose's services.env holds.
    assert_eq!(xtask::secrets::K8S_SECRET, REDIS_SECRET);
    assert_eq!(xtask::secrets::K8S_NAMESPACE, NAMESPACE);
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = xtask::secrets::SecretsDir::new(dir.path());
    let files = xtask::secrets::k8s_secret_files(
        &secrets,
        &acl_template_path(),
        &xtask::secrets::RedisTopology::Single,
        &mut Vec::new(),
    )
    .expect("rendering the Secret's files");
    let created: BTreeSet<&str> = files.iter().map(|f| f.key).collect();
    let expected: BTreeSet<&str> = [
        "REDIS_URL",
        "REDIS_USERNAME",
        "REDIS_PASSWORD",
        "REDISCLI_AUTH",
        "users.acl",
    ]
    .into();
    assert_eq!(created, expected, "keys created by `just k8s-secrets`");
    let k8s_url = files
        .iter()
        .find(|f| f.key == "REDIS_URL")
        .map(|f| fs::read_to_string(&f.path).expect("REDIS_URL file"))
        .expect("REDIS_URL");
    assert_eq!(
        env_file(&secrets.services_env())["REDIS_URL"],
        k8s_url,
        "compose (`_redis-secrets`) and Kubernetes (`k8s-secrets`) write the same REDIS_URL"
    );
}

#[test]
fn redis_is_published_on_the_host_loopback_only() {
    let ports: Vec<String> = compose_service("redis")["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(scalar)
        .collect();
    assert_eq!(ports, ["127.0.0.1:6380:6379"], "with the defaults");
}

/// The `user` lines of the ACL template: user name → rules after the password placeholder.
fn acl_template_users() -> BTreeMap<String, Vec<String>> {
    let path = workspace_root().join("compose/redis-users.acl.template");
    let text = fs::read_to_string(&path).expect("ACL template");
    text.lines()
        .filter(|line| line.starts_with("user "))
        .map(|line| {
            let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            (words[1].clone(), words[2..].to_vec())
        })
        .collect()
}

/// `(command, first argument)` of every `redis.call`/`redis.pcall` in the Lua scripts and every
/// `cmd("...")` in queue.rs, lowercase.
fn commands_the_services_send() -> BTreeSet<(String, Option<String>)> {
    let src = workspace_root().join("services/taskq/src");
    let mut commands = BTreeSet::new();
    let mut sources = vec![fs::read_to_string(src.join("queue.rs")).expect("queue.rs")];
    for entry in fs::read_dir(src.join("scripts")).expect("scripts") {
        sources.push(fs::read_to_string(entry.expect("entry").path()).expect("script"));
    }
    let quoted = |text: &str| -> Option<String> {
        let text = text.trim_start();
        let quote = text.chars().next().filter(|c| *c == '\'' || *c == '"')?;
        let rest = &text[1..];
        Some(rest[..rest.find(quote)?].to_ascii_lowercase())
    };
    for source in &sources {
        for marker in ["redis.call(", "redis.pcall(", "cmd(\""] {
            for (i, _) in source.match_indices(marker) {
                let after = &source[i + marker.len() - usize::from(marker.ends_with('"'))..];
                let Some(command) = quoted(after) else {
                    continue;
                };
                // XGROUP CREATE, XINFO GROUPS: the ACL names the subcommand. Lua: the call's
                // second argument; Rust: an `.arg("...")` right after `cmd("...")`.
                let call = &after[..after.find(')').unwrap_or(after.len())];
                let first_arg = call
                    .split_once(',')
                    .and_then(|(_, rest)| quoted(rest))
                    .or_else(|| {
                        after[call.len()..]
                            .trim_start_matches(')')
                            .trim_start()
                            .strip_prefix(".arg(\"")
                            .and_then(|rest| rest.split_once('"'))
                            .map(|(arg, _)| arg.to_ascii_lowercase())
                    });
                commands.insert((command, first_arg));
            }
        }
    }
    commands
}

#[test]
fn the_acl_template_gives_the_services_user_its_commands_and_only_its_key_prefix() {
    let users = acl_template_users();
    let default = &users["default"];
    let agent = &users["agent"];

    assert_eq!(
        (default[0].as_str(), default[1].as_str()),
        ("on", "@ADMIN_PASSWORD_HASHES@")
    );
    assert_eq!(
        (agent[0].as_str(), agent[1].as_str()),
        ("on", "@AGENT_PASSWORD_HASHES@")
    );
    for (name, rules) in &users {
        assert!(
            !rules.iter().any(|r| r == "nopass"),
            "user {name} must need a password"
        );
    }
    let prefix = format!("~{}:*", taskq::Keys::default().prefix());
    let key_rules: Vec<&String> = agent
        .iter()
        .filter(|r| r.starts_with('~') || r.starts_with('%') || *r == "allkeys")
        .collect();
    assert_eq!(key_rules, [&prefix], "the services' keys only");
    for forbidden in [
        "+@all",
        "allcommands",
        "+@dangerous",
        "+@admin",
        "+flushall",
        "+keys",
        "+scan",
        "+config",
    ] {
        assert!(
            !agent.iter().any(|r| r == forbidden),
            "the user agent must not have {forbidden}"
        );
    }
    assert!(agent.contains(&"-@all".to_owned()) && agent.contains(&"resetchannels".to_owned()));

    let allowed: BTreeSet<&str> = agent.iter().filter_map(|r| r.strip_prefix('+')).collect();
    let sent = commands_the_services_send();
    assert!(
        sent.iter().any(|(c, _)| c == "xautoclaim") && sent.iter().any(|(c, _)| c == "hgetall"),
        "the command scan found too little: {sent:?}"
    );
    let mut missing = Vec::new();
    for (command, first_arg) in &sent {
        let with_sub = first_arg.as_ref().map(|arg| format!("{command}|{arg}"));
        let ok = allowed.contains(command.as_str())
            || with_sub.as_deref().is_some_and(|c| allowed.contains(c));
        if !ok {
            missing.push(with_sub.unwrap_or_else(|| command.clone()));
        }
    }
    assert!(
        missing.is_empty(),
        "the services send commands the user agent may not run: {missing:?}"
    );
    // redis-rs: scripts go as EVALSHA and are loaded with SCRIPT LOAD on NOSCRIPT; KEDA's scaler
    // reads XINFO GROUPS, XPENDING and XLEN.
    for needed in [
        "evalsha",
        "script|load",
        "ping",
        "xinfo|groups",
        "xpending",
        "xlen",
    ] {
        assert!(allowed.contains(needed), "the user agent needs +{needed}");
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn env_file(path: &Path) -> BTreeMap<String, String> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn acl_template_path() -> PathBuf {
    workspace_root().join(xtask::secrets::ACL_TEMPLATE)
}

/// `#<sha256>` as Redis's ACL file names a password.
fn hash(password: &str) -> String {
    xtask::secrets::password_hash(password)
}

#[test]
fn redis_secrets_are_created_once_consistent_and_never_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = dir.path().join("secrets");
    // What `just _redis-secrets` (every compose recipe) runs; returns what it printed.
    let render = || {
        let mut output = Vec::new();
        xtask::secrets::render(
            &xtask::secrets::SecretsDir::new(&secrets),
            &acl_template_path(),
            &xtask::secrets::RedisTopology::Single,
            &mut output,
        )
        .expect("rendering the Redis secrets");
        String::from_utf8(output).expect("utf-8 output")
    };

    let first_output = render();
    let admin = fs::read_to_string(secrets.join("redis-admin-password")).expect("admin password");
    let agent = fs::read_to_string(secrets.join("redis-agent-password")).expect("agent password");
    let second_output = render();

    for password in [&admin, &agent] {
        assert_eq!(password.len(), 64, "32 random bytes in hex");
        assert!(password.chars().all(|c| c.is_ascii_hexdigit()), "URL-safe");
        for output in [&first_output, &second_output] {
            assert!(
                !output.contains(password.as_str()),
                "rendering printed a password"
            );
        }
    }
    assert_ne!(admin, agent);
    assert_eq!(
        fs::read_to_string(secrets.join("redis-agent-password")).expect("agent password"),
        agent,
        "a second run keeps the passwords"
    );
    for (file, names) in ENV_FILES {
        let vars = env_file(&secrets.join(file.trim_start_matches("./secrets/")));
        assert_eq!(
            vars.keys().map(String::as_str).collect::<Vec<_>>(),
            names,
            "{file}"
        );
    }
    let services = env_file(&secrets.join("services.env"));
    assert_eq!(
        services["REDIS_URL"],
        format!("redis://agent:{agent}@agent-redis:6379")
    );
    assert_eq!(env_file(&secrets.join("redis.env"))["REDISCLI_AUTH"], admin);
    let acl = fs::read_to_string(secrets.join("redis-acl/users.acl")).expect("ACL file");
    assert!(
        acl.lines().all(|l| l.starts_with("user ")),
        "Redis's ACL file allows no comments or blank lines:\n{acl}"
    );
    assert!(acl.contains(&format!("user default on {} ", hash(&admin))));
    assert!(acl.contains(&format!("user agent on {} ", hash(&agent))));
    assert!(
        !acl.contains(&admin) && !acl.contains(&agent),
        "the ACL file holds hashes only"
    );
    // Passwords are for their owner; the ACL directory is read by the container's redis user.
    assert_eq!(mode(&secrets), 0o700);
    for file in [
        "redis-admin-password",
        "redis-agent-password",
        "redis.env",
        "services.env",
    ] {
        assert_eq!(mode(&secrets.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&secrets.join("redis-acl")), 0o755);
    assert_eq!(mode(&secrets.join("redis-acl/users.acl")), 0o644);

    // While a rotation is under way, both agent passwords are valid.
    fs::write(secrets.join("redis-agent-password.previous"), &agent).expect("previous");
    fs::write(secrets.join("redis-agent-password"), "f".repeat(64)).expect("new");
    render();
    let acl = fs::read_to_string(secrets.join("redis-acl/users.acl")).expect("ACL file");
    assert!(
        acl.contains(&format!(
            "user agent on {} {} ",
            hash(&"f".repeat(64)),
            hash(&agent)
        )),
        "{acl}"
    );

    let ignored = Command::new("git")
        .args(["check-ignore", "-q", "compose/secrets/services.env"])
        .current_dir(workspace_root())
        .status()
        .expect("git");
    assert!(ignored.success(), "compose/secrets/ must be git-ignored");
}
