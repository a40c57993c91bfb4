# Agent System: the one entry point. `just --list` documents every recipe.

# List the recipes
default:
    @just --list

# Run the whole test suite (unit, integration against a real redis-server, Docker scenarios)
test: _require-redis-server _require-browser
    cargo test --workspace

# What CI runs: formatting, lints, then the whole test suite (which includes the smoke load)
ci: fmt-check lint test

# Format the code
fmt:
    cargo fmt --all

# Fail when the code is not formatted
fmt-check:
    cargo fmt --all --check

# Clippy on every target, warnings are errors
lint:
    cargo clippy --workspace --all-targets -- -D warnings

# Run redis-server, the orchestrator (port 8000) and one worker as local processes until Ctrl-C
run:
    cargo xtask run

# Run one fault scenario (scenarios/NAME.toml) and print its summary; extra args go to `harness run`
scenario NAME *args:
    cargo run -q -p harness -- run {{NAME}} {{args}}

# Run every scenario (quick mode, time scale 0.25) and write reports/scenarios.json, then the controls
scenarios *args:
    mkdir -p reports
    cargo run -q -p harness -- run scenarios/*.toml --time-scale 0.25 --report reports/scenarios.json {{args}}
    @just controls {{args}}

# Run the negative controls (scenarios/controls/): each must FAIL (exit 1), or this recipe fails
controls *args:
    mkdir -p reports && cargo run -q -p harness -- run scenarios/controls/*.toml --time-scale 0.25 --report reports/controls.json {{args}}; test $? -eq 1

# Fuzz the task decoder and input validation for `seconds` (cargo-fuzz; stable Rust via RUSTC_BOOTSTRAP)
fuzz seconds="30":
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
    cd fuzz
    RUSTC_BOOTSTRAP=1 cargo fuzz run task_record --sanitizer none -- -max_total_time={{seconds}} -print_final_stats=1 2>&1 \
        | grep -E "^(#[0-9]+.*DONE|Done|stat::number_of_executed_units|==[0-9]+== ERROR|SUMMARY)" || true
    test -z "$(ls artifacts/task_record 2>/dev/null)" || { echo "fuzzing found a crash: fuzz/artifacts/task_record" >&2; exit 1; }

# schemathesis against a local orchestrator's /openapi.json: no 5xx, every answer matches the schema
api-fuzz examples="100": _require-redis-server
    #!/usr/bin/env bash
    set -euo pipefail
    command -v schemathesis >/dev/null || pip install -q schemathesis
    cargo build -q -p orchestrator
    dir=$(mktemp -d); port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid"
    REDIS_URL="redis://127.0.0.1:$port" LISTEN_ADDR=127.0.0.1:0 LOG_FORMAT=json target/debug/orchestrator > "$dir/orchestrator.log" 2>&1 &
    orchestrator=$!
    trap 'kill $orchestrator 2>/dev/null || true; redis-cli -p '"$port"' shutdown nosave >/dev/null 2>&1 || true; rm -rf '"$dir" EXIT
    for _ in $(seq 100); do addr=$(grep -o '"listen_addr":"[^"]*"' "$dir/orchestrator.log" | cut -d'"' -f4 || true); [ -n "$addr" ] && break; sleep 0.1; done
    # DELETE cancels (the record stays readable as `cancelled`), so "deleted resource still available" does not apply.
    # A schema-valid POST may rightly be refused by state: schemathesis reuses an Idempotency-Key
    # with another body, which is 422 idempotency_key_reused by contract (positive_data_acceptance).
    schemathesis run "http://$addr/openapi.json" --checks all --exclude-checks use_after_free,positive_data_acceptance \
        --max-examples {{examples}} --generation-deterministic

# 10-second goose submit load against a local system; fails on any request error
smoke-load: _require-redis-server
    cargo test -p loadtests --test smoke -- --nocapture

# ---------------------------------------------------------------------------------------------
# Containers: offline images, per-service compose projects on agent-system-net, and `dev`.
# Each service is its own compose project (agent-redis, agent-orchestrator, agent-worker), so
# restarting, rebuilding or scaling one never touches the others. See docs/deploy.md.
# The logic lives in Rust: `cargo xtask <recipe>` (xtask/src/compose.rs, secrets.rs, ...).
# ---------------------------------------------------------------------------------------------

# `docker compose` (v2 plugin) when present, else docker-compose v1.29; both read compose/*.yml.
compose := `docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose`
# Generated Redis passwords and what derives from them (env files, ACL file); git-ignored.
secrets_dir := "compose/secrets"

# Start redis → orchestrator → `workers` worker replicas in containers, wait until healthy, print them
# (REDIS_SHARDS=3: a Redis Cluster of 3 primaries and 3 replicas instead of one Redis)
up workers="1":
    cargo xtask up {{workers}}

# Stop and remove the service containers (the Redis volume and the network stay; see `clean`)
down: _require-docker _redis-secrets
    {{compose}} -p agent-worker -f compose/worker.yml down --remove-orphans
    {{compose}} -p agent-orchestrator -f compose/orchestrator.yml down --remove-orphans
    {{compose}} -p agent-redis -f compose/redis.yml down --remove-orphans
    {{compose}} -p agent-redis-cluster -f compose/redis-cluster.yml down --remove-orphans

# Restart one service (redis | orchestrator | worker) in place, leaving the others untouched
restart service:
    cargo xtask restart {{service}}

# Rebuild images and recreate one service if its image changed (worker keeps its replica count)
upgrade service:
    cargo xtask upgrade {{service}}

# Run N worker containers (they share the queue through the Redis consumer group)
scale n:
    cargo xtask scale {{n}}

# Follow the logs of one service (redis | orchestrator | worker), or of all three when omitted
logs service="":
    cargo xtask logs {{service}}

# Show the service containers with their health and published ports
ps:
    @cargo xtask ps

# Remove containers, the Redis (or Redis Cluster) and Prometheus volumes (queued tasks are lost) and the network
clean: _require-docker _redis-secrets
    {{compose}} -p agent-monitoring -f compose/monitoring/compose.yml down --volumes --remove-orphans
    {{compose}} -p agent-worker -f compose/worker.yml down --volumes --remove-orphans
    {{compose}} -p agent-orchestrator -f compose/orchestrator.yml down --volumes --remove-orphans
    {{compose}} -p agent-redis -f compose/redis.yml down --volumes --remove-orphans
    {{compose}} -p agent-redis-cluster -f compose/redis-cluster.yml down --volumes --remove-orphans
    @docker network rm agent-system-net >/dev/null 2>&1 && echo "removed network agent-system-net" || true

# Build the images agent-redis, agent-orchestrator, agent-worker when stale (`just images --force`)
images *args:
    cargo xtask images {{args}}

# Rotate the password of the Redis user `agent` (orchestrator, workers) with no failed Redis call
redis-rotate-password:
    cargo xtask redis-rotate-password

# Create the external network agent-system-net if it does not exist
network:
    @cargo xtask network

# Run a local redis-server, the orchestrator and a worker as processes; rebuild + restart on change
dev:
    cargo xtask dev

# Check that the Kubernetes manifests parse and agree with compose/ (names, ports, env vars)
k8s-check:
    cargo test -q -p harness --test k8s_manifests

# Apply k8s/ to the current kubectl context, creating the Secret first (KEDA: kubectl apply -f k8s/keda/)
k8s-apply:
    cargo xtask k8s-apply

# Create the Secret agent-system/agent-redis (random passwords, Redis ACL file) unless it exists
k8s-secrets:
    cargo xtask k8s-secrets

# Build agent-prometheus from Debian's prometheus package when missing or stale (`--force`)
monitoring-images *args:
    cargo xtask images --only prometheus {{args}}

# Start Prometheus on agent-system-net: scrapes the orchestrator and every worker, evaluates the alerts
monitoring-up:
    cargo xtask monitoring-up

# Stop Prometheus; its data stays in the volume agent-prometheus-data (`just clean` removes it)
monitoring-down: _require-docker
    {{compose}} -p agent-monitoring -f compose/monitoring/compose.yml down --remove-orphans

# Benchmark a local system (redis-server with appendfsync everysec and always, release builds as processes; about 7 min); writes docs/benchmarks.md and .json. Options: `just bench --help`
bench *args:
    cargo run -q --release -p xtask -- bench {{args}}

# Redis's instructions per drained no-op task, the workers against the bench's bare consumer, counted by valgrind's callgrind (repeatable where rates are not; about a minute). Options: `just redis-cost --help`
redis-cost *args:
    cargo run -q --release -p xtask -- redis-cost {{args}}

# Docker CLI, a reachable engine and compose (v2 plugin or v1.29), else what to install
[private]
_require-docker:
    @cargo xtask require docker

# redis-server and redis-cli (Debian package, installed when root; its binaries go into agent-redis)
[private]
_require-redis-server:
    @cargo xtask require redis-server

# chromium for the dashboard's browser test (Debian package, installed when root; or CHROME)
[private]
_require-browser:
    @cargo xtask require browser

# Create the Redis passwords when missing and derive from them the env files and the ACL file.
# Prints no secret; says when a running Redis has an older ACL file (xtask/src/secrets.rs).
[private]
_redis-secrets dir=secrets_dir:
    @cargo xtask redis-secrets --dir {{dir}}
