//! The Kubernetes manifests in `k8s/` parse and agree with the compose files in `compose/`.
//!
//! Both describe the same three services, so the names, images, ports, environment variables
//! (names and default values), the Redis persistence flags and the grace periods must match.
//! The KEDA triggers must name the streams and consumer group the `taskq` crate really uses.
//! Needs no cluster and no Docker: the files are read as YAML.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

const NAMESPACE: &str = "agent-system";

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

fn compose_env(service: &str) -> BTreeMap<String, String> {
    let environment = &compose_service(service)["environment"];
    let map = environment
        .as_mapping()
        .unwrap_or_else(|| panic!("compose/{service}.yml: environment must be a mapping"));
    map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect()
}

/// Names and resolved values of a container's environment (`env` and `envFrom`).
fn k8s_env(objects: &[Object], container: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container["env"].as_sequence().into_iter().flatten() {
        let name = scalar(&var["name"]);
        let value = if let Some(value) = var.get("value") {
            scalar(value)
        } else if let Some(reference) = var["valueFrom"].get("configMapKeyRef") {
            let config = object(objects, "ConfigMap", &scalar(&reference["name"]));
            scalar(&config["data"][scalar(&reference["key"]).as_str()])
        } else if let Some(reference) = var["valueFrom"].get("secretKeyRef") {
            let secret = object(objects, "Secret", &scalar(&reference["name"]));
            scalar(&secret["stringData"][scalar(&reference["key"]).as_str()])
        } else {
            panic!("env var {name} has neither value nor a ConfigMap/Secret reference")
        };
        env.insert(name, value);
    }
    for source in container["envFrom"].as_sequence().into_iter().flatten() {
        let (kind, field, reference) = match source.get("configMapRef") {
            Some(reference) => ("ConfigMap", "data", reference),
            None => ("Secret", "stringData", &source["secretRef"]),
        };
        let data = &object(objects, kind, &scalar(&reference["name"]))[field];
        for (k, v) in data.as_mapping().into_iter().flatten() {
            env.insert(scalar(k), scalar(v));
        }
    }
    env
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
        "Secret",
        "StatefulSet",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "ScaledObject",
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
        assert_eq!(compose["REDIS_URL"], "redis://agent-redis:6379");
        assert_eq!(compose["LOG_FORMAT"], "json");
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
    assert_eq!(compose_volumes, vec!["redis-data:/data".to_string()]);
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
}

#[test]
fn grace_periods_outlast_the_worker_drain() {
    let objects = manifests();

    let compose_drain_ms: u64 = compose_env("worker")["WORKER_SHUTDOWN_GRACE_MS"]
        .parse()
        .expect("numeric WORKER_SHUTDOWN_GRACE_MS");
    let compose_grace = compose_duration("worker", "stop_grace_period");
    assert!(
        compose_grace > Duration::from_millis(compose_drain_ms),
        "compose stop_grace_period {compose_grace:?} must exceed the drain of {compose_drain_ms} ms"
    );

    let worker = object(&objects, "Deployment", "agent-worker");
    let k8s_grace_s = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("worker terminationGracePeriodSeconds");
    let k8s_drain_ms: u64 = k8s_env(&objects, container(&objects, "Deployment", "agent-worker"))
        ["WORKER_SHUTDOWN_GRACE_MS"]
        .parse()
        .expect("numeric drain");
    assert!(
        k8s_grace_s * 1000 > k8s_drain_ms,
        "terminationGracePeriodSeconds {k8s_grace_s} must exceed the drain of {k8s_drain_ms} ms"
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
