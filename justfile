# Agent System: the one entry point. `just --list` documents every recipe.

# List the recipes
default:
    @just --list

# Run the whole test suite (unit, integration against a real redis-server, Docker scenarios)
test: _require-redis-server
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
run: _require-redis-server
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release -p orchestrator -p worker
    port="${RUN_REDIS_PORT:-6379}"
    if ! redis-cli -p "$port" ping >/dev/null 2>&1; then
        dir="$PWD/target/run-redis"; mkdir -p "$dir"
        redis-server --port "$port" --bind 127.0.0.1 --appendonly yes --appendfsync always \
            --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
        trap 'redis-cli -p "$port" shutdown >/dev/null 2>&1 || true' EXIT
        echo "run: started redis-server on port $port (data and log in $dir)"
    fi
    export REDIS_URL="redis://127.0.0.1:$port" LOG_FORMAT="${LOG_FORMAT:-text}"
    echo "run: orchestrator on http://localhost:8000, worker metrics on http://localhost:9000/metrics"
    trap 'kill 0' INT TERM
    target/release/orchestrator & target/release/worker & wait

# Run one fault scenario (scenarios/NAME.toml) and print its summary; extra args go to `harness run`
scenario NAME *args:
    cargo run -q -p harness -- run {{NAME}} {{args}}

# Run every scenario (quick mode, time scale 0.25) and write reports/scenarios.json
scenarios *args:
    mkdir -p reports
    cargo run -q -p harness -- run scenarios/*.toml --time-scale 0.25 --report reports/scenarios.json {{args}}

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
    schemathesis run "http://$addr/openapi.json" --checks all --exclude-checks use_after_free \
        --max-examples {{examples}} --generation-deterministic

# 10-second goose submit load against a local system; fails on any request error
smoke-load: _require-redis-server
    cargo test -p loadtests --test smoke -- --nocapture

# ---------------------------------------------------------------------------------------------
# Containers: offline images, per-service compose projects on agent-system-net, and `dev`.
# Each service is its own compose project (agent-redis, agent-orchestrator, agent-worker), so
# restarting, rebuilding or scaling one never touches the others. See docs/deploy.md.
# ---------------------------------------------------------------------------------------------

# `docker compose` (v2 plugin) when present, else docker-compose v1.29; both read compose/*.yml.
compose := `docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose`
# `cargo xtask images` builds agent-redis/-orchestrator/-worker from release binaries.
xtask_images := "cargo xtask images"
ps_format := "table {{.Names}}\t{{.Image}}\t{{.Status}}\t{{.Ports}}"
ps_filters := "--filter name=^agent-redis$ --filter name=^agent-orchestrator$ --filter name=^agent-worker[-_]worker[-_] --filter name=^agent-prometheus$"
# Generated Redis passwords and what derives from them (env files, ACL file); git-ignored.
secrets_dir := "compose/secrets"

# Start redis → orchestrator → `workers` worker replicas in containers, wait until healthy, print them
up workers="1": images _redis-secrets
    @just network
    {{compose}} -p agent-redis -f compose/redis.yml up -d
    @just _wait-healthy agent-redis 1
    {{compose}} -p agent-orchestrator -f compose/orchestrator.yml up -d
    {{compose}} -p agent-worker -f compose/worker.yml up -d --scale worker={{workers}}
    @just _wait-healthy agent-orchestrator 1
    @just _wait-healthy agent-worker {{workers}}
    @just ps
    @echo
    @echo "orchestrator: http://localhost:${ORCHESTRATOR_HOST_PORT:-8001}   redis: ${REDIS_HOST_BIND:-127.0.0.1}:${REDIS_HOST_PORT:-6380} (password required: {{secrets_dir}}/)"
    @echo "try: curl -sS -X POST http://localhost:${ORCHESTRATOR_HOST_PORT:-8001}/tasks -H 'content-type: application/json' -d '{\"description\":\"hello\",\"priority\":5}'"

# Stop and remove the service containers (the Redis volume and the network stay; see `clean`)
down: _require-docker _redis-secrets
    {{compose}} -p agent-worker -f compose/worker.yml down --remove-orphans
    {{compose}} -p agent-orchestrator -f compose/orchestrator.yml down --remove-orphans
    {{compose}} -p agent-redis -f compose/redis.yml down --remove-orphans

# Restart one service (redis | orchestrator | worker) in place, leaving the others untouched
restart service: _require-docker _redis-secrets (_check-service service)
    {{compose}} -p agent-{{service}} -f compose/{{service}}.yml restart
    @just _wait-healthy agent-{{service}} `docker ps -q --filter label=com.docker.compose.project=agent-{{service}} | wc -l`

# Rebuild images and recreate one service if its image changed (worker keeps its replica count)
upgrade service: images _redis-secrets (_check-service service)
    {{compose}} -p agent-{{service}} -f compose/{{service}}.yml up -d {{ if service == "worker" { "--scale worker=`docker ps -q --filter label=com.docker.compose.project=agent-worker | wc -l | sed 's/^0$/1/'`" } else { "" } }}
    @just _wait-healthy agent-{{service}} `docker ps -q --filter label=com.docker.compose.project=agent-{{service}} | wc -l`

# Run N worker containers (they share the queue through the Redis consumer group)
scale n: _require-docker _redis-secrets
    {{compose}} -p agent-worker -f compose/worker.yml up -d --no-recreate --scale worker={{n}}
    @just _wait-healthy agent-worker {{n}}

# Follow the logs of one service (redis | orchestrator | worker), or of all three when omitted
logs service="": _require-docker _redis-secrets
    #!/usr/bin/env bash
    set -euo pipefail
    services="{{ if service == "" { "redis orchestrator worker" } else { service } }}"
    for s in $services; do just _check-service "$s"; done
    # One follower per compose project; Ctrl-C reaches them all (same process group).
    for s in $services; do {{compose}} -p "agent-$s" -f "compose/$s.yml" logs -f --tail=100 & done
    wait

# Show the service containers with their health and published ports
ps: _require-docker
    @docker ps -a {{ps_filters}} --format "{{ps_format}}"

# Remove containers, the Redis and Prometheus volumes (queued tasks are lost) and the network
clean: _require-docker _redis-secrets
    {{compose}} -p agent-monitoring -f compose/monitoring/compose.yml down --volumes --remove-orphans
    {{compose}} -p agent-worker -f compose/worker.yml down --volumes --remove-orphans
    {{compose}} -p agent-orchestrator -f compose/orchestrator.yml down --volumes --remove-orphans
    {{compose}} -p agent-redis -f compose/redis.yml down --volumes --remove-orphans
    @docker network rm agent-system-net >/dev/null 2>&1 && echo "removed network agent-system-net" || true

# Build the images agent-redis, agent-orchestrator, agent-worker when stale (`just images --force`)
images *args: _require-docker
    #!/usr/bin/env bash
    set -euo pipefail
    only=""
    if [ -n "${REDIS_IMAGE:-}" ] && [ "${REDIS_IMAGE}" != "agent-redis:latest" ]; then
        only="--only orchestrator --only worker"   # the user brings their own Redis image
    else
        just _require-redis-server
    fi
    {{xtask_images}} $only {{args}}

# Rotate the password of the Redis user `agent` (orchestrator, workers) with no failed Redis call
redis-rotate-password: _require-docker _redis-secrets
    #!/usr/bin/env bash
    set -euo pipefail
    dir="{{secrets_dir}}"
    [ "$(docker inspect --format '{{{{.State.Running}}' agent-redis 2>/dev/null)" = true ] \
        || { echo "error: agent-redis is not running; start the deployment with: just up" >&2; exit 1; }
    sha() { tr -d '\n' < "$1" | sha256sum | cut -d' ' -f1; }
    # Commands go to redis-cli on stdin, so not even a hash shows in `ps`; stdin mode always exits 0.
    acl_setuser() {
        local reply; reply=$(printf 'ACL SETUSER agent %s\n' "$1" | docker exec -i agent-redis redis-cli)
        [ "$reply" = OK ] || { echo "error: ACL SETUSER failed: $reply" >&2; exit 1; }
    }
    if [ -s "$dir/redis-agent-password.previous" ]; then
        echo "rotate: finishing the rotation that stopped half-way"
    else
        mv "$dir/redis-agent-password" "$dir/redis-agent-password.previous"
        just _redis-secrets "$dir" quiet          # a new password; the ACL file lists both hashes
    fi
    # ACL SETUSER, not ACL LOAD: ACL LOAD would drop every connection of every user.
    acl_setuser "#$(sha "$dir/redis-agent-password")"
    echo "rotate: Redis accepts the old and the new password; recreating the orchestrator and the workers"
    workers=$(docker ps -q --filter label=com.docker.compose.project=agent-worker | wc -l)
    {{compose}} -p agent-orchestrator -f compose/orchestrator.yml up -d
    just _wait-healthy agent-orchestrator 1
    if [ "$workers" -gt 0 ]; then
        {{compose}} -p agent-worker -f compose/worker.yml up -d --scale worker="$workers"
        just _wait-healthy agent-worker "$workers"
    fi
    acl_setuser "!$(sha "$dir/redis-agent-password.previous")"
    rm "$dir/redis-agent-password.previous"
    just _redis-secrets "$dir" quiet
    echo "rotate: done; the old password of the Redis user agent is refused from now on"

# Create the external network agent-system-net if it does not exist
network: _require-docker
    @docker network inspect agent-system-net >/dev/null 2>&1 || { docker network create agent-system-net >/dev/null && echo "created network agent-system-net"; }

# Run a local redis-server, the orchestrator and a worker as processes; rebuild + restart on change
dev: _require-redis-server
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-watch >/dev/null || cargo install --locked cargo-watch
    port="${DEV_REDIS_PORT:-6379}"
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
        echo "dev: using the redis-server already answering on port $port"
    else
        dir="$PWD/target/dev-redis"; mkdir -p "$dir"
        redis-server --port "$port" --bind 127.0.0.1 --appendonly yes --appendfsync always \
            --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
        trap 'redis-cli -p "$port" shutdown >/dev/null 2>&1 || true' EXIT
        echo "dev: started redis-server on port $port (data and log in $dir)"
    fi
    export REDIS_URL="redis://127.0.0.1:$port" LOG_FORMAT="${LOG_FORMAT:-text}" RUST_LOG="${RUST_LOG:-info}"
    bin="${CARGO_TARGET_DIR:-target}/debug"
    echo "dev: orchestrator on http://localhost:8000; edits under services/ rebuild and restart both"
    # cargo-watch joins -x and -s with `&&`; the inner sh keeps both services after the build.
    cargo watch -w services -w Cargo.toml -w Cargo.lock \
        -x 'build -p orchestrator -p worker' \
        -s "sh -c '$bin/orchestrator & $bin/worker & wait'"

# Check that the Kubernetes manifests parse and agree with compose/ (names, ports, env vars)
k8s-check:
    cargo test -q -p harness --test k8s_manifests

# Apply k8s/ to the current kubectl context, creating the Secret first (KEDA: kubectl apply -f k8s/keda/)
k8s-apply:
    kubectl apply -f k8s/00-namespace.yaml
    just k8s-secrets
    kubectl apply -f k8s/

# Create the Secret agent-system/agent-redis (random passwords, Redis ACL file) unless it exists
k8s-secrets:
    #!/usr/bin/env bash
    set -euo pipefail
    if kubectl -n agent-system get secret agent-redis >/dev/null 2>&1; then
        echo "k8s: Secret agent-redis exists; left as it is (rotation: docs/deploy.md)"
        exit 0
    fi
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    just _redis-secrets "$tmp" quiet
    # --from-file takes a file's bytes as they are: no trailing newline, and nothing in `ps`.
    printf 'redis://agent:%s@agent-redis:6379' "$(cat "$tmp/redis-agent-password")" > "$tmp/redis-url"
    printf agent > "$tmp/redis-username"
    kubectl -n agent-system create secret generic agent-redis \
        --from-file=REDIS_URL="$tmp/redis-url" \
        --from-file=REDIS_USERNAME="$tmp/redis-username" \
        --from-file=REDIS_PASSWORD="$tmp/redis-agent-password" \
        --from-file=REDISCLI_AUTH="$tmp/redis-admin-password" \
        --from-file=users.acl="$tmp/redis-acl/users.acl" >/dev/null
    kubectl -n agent-system label secret agent-redis app.kubernetes.io/part-of=agent-system >/dev/null
    echo "k8s: created Secret agent-redis (Redis admin and agent passwords, REDIS_URL, ACL file)"

# Build agent-prometheus from Debian's prometheus package when missing or stale (`--force`)
monitoring-images *args: _require-docker _require-prometheus
    {{xtask_images}} --only prometheus {{args}}

# Start Prometheus on agent-system-net: scrapes the orchestrator and every worker, evaluates the alerts
monitoring-up: monitoring-images
    @just network
    {{compose}} -p agent-monitoring -f compose/monitoring/compose.yml up -d
    @just _wait-healthy agent-monitoring 1
    @echo "prometheus: http://127.0.0.1:${PROMETHEUS_HOST_PORT:-9090}/targets and /alerts; Grafana dashboard to import: compose/monitoring/dashboards/agent-system.json"

# Stop Prometheus; its data stays in the volume agent-prometheus-data (`just clean` removes it)
monitoring-down: _require-docker
    {{compose}} -p agent-monitoring -f compose/monitoring/compose.yml down --remove-orphans

[private]
_require-docker:
    #!/usr/bin/env bash
    if ! command -v docker >/dev/null 2>&1; then
        echo "error: docker is not installed (no 'docker' on PATH). Install Docker Engine (Debian: apt-get install -y docker.io docker-compose), or run the services without containers: just dev" >&2
        exit 1
    fi
    if ! docker info >/dev/null 2>&1; then
        echo "error: the Docker engine is not reachable: is dockerd running, and may $(id -un) use /var/run/docker.sock?" >&2
        exit 1
    fi
    if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
        echo "error: neither 'docker compose' (v2 plugin) nor 'docker-compose' (v1.29) is installed (Debian: apt-get install -y docker-compose)" >&2
        exit 1
    fi

[private]
_require-redis-server:
    #!/usr/bin/env bash
    set -euo pipefail
    command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 && exit 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: redis-server is missing; install it with: sudo apt-get install -y redis-server" >&2
        exit 1
    fi
    echo "installing redis-server (Debian package; its binaries go into the agent-redis image)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null

# Debian's prometheus package provides the binaries of agent-prometheus (installed when missing)
[private]
_require-prometheus:
    #!/usr/bin/env bash
    set -euo pipefail
    [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] && exit 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: prometheus is missing; install it with: sudo apt-get install -y --no-install-recommends prometheus" >&2
        exit 1
    fi
    echo "installing prometheus (Debian package; its binaries go into the agent-prometheus image)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # Only the binaries are wanted: the package's own service would take port 9090 on the host.
    if command -v systemctl >/dev/null && systemctl is-enabled --quiet prometheus 2>/dev/null; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
        echo "disabled the host's prometheus.service that the package started"
    fi

# Create the Redis passwords when missing and derive from them the env files and the ACL file.
# Prints no secret. `notify=quiet`: no hint when a running Redis has an older ACL file.
[private]
_redis-secrets dir=secrets_dir notify="yes":
    #!/usr/bin/env bash
    set -euo pipefail
    umask 077
    dir="{{dir}}"
    mkdir -p "$dir/redis-acl"
    chmod 700 "$dir"
    chmod 755 "$dir/redis-acl"     # mounted into agent-redis, whose redis user (uid 10001) reads it
    for user in admin agent; do
        file="$dir/redis-$user-password"
        if [ ! -s "$file" ]; then
            # 32 random bytes as 64 hex digits: nothing to escape in a URL or an env file.
            head -c 32 /dev/urandom | od -An -v -tx1 | tr -d ' \n' > "$file"
            echo "created the Redis $user password in $file"
        fi
    done
    hashes() {  # "#<sha256>" per password file that exists; printf and read are builtins, not in ps
        local out="" file
        for file in "$@"; do
            if [ -s "$file" ]; then out="$out #$(tr -d '\n' < "$file" | sha256sum | cut -d' ' -f1)"; fi
        done
        printf '%s' "${out# }"
    }
    admin=$(hashes "$dir/redis-admin-password")
    agent=$(hashes "$dir/redis-agent-password" "$dir/redis-agent-password.previous")
    acl="$dir/redis-acl/users.acl"
    # Redis's ACL file has no comments: keep the `user` lines of the template.
    grep '^user ' compose/redis-users.acl.template \
        | sed -e "s/@ADMIN_PASSWORD_HASHES@/$admin/" -e "s/@AGENT_PASSWORD_HASHES@/$agent/" > "$acl.new"
    chmod 644 "$acl.new"
    read -r admin_password < "$dir/redis-admin-password" || true
    read -r agent_password < "$dir/redis-agent-password" || true
    old_redis_env=$(cat "$dir/redis.env" 2>/dev/null || true)
    printf 'REDISCLI_AUTH=%s\n' "$admin_password" > "$dir/redis.env"
    printf 'REDIS_URL=redis://agent:%s@agent-redis:6379\n' "$agent_password" > "$dir/services.env"
    if cmp -s "$acl.new" "$acl"; then
        rm "$acl.new"
    else
        mv "$acl.new" "$acl"
        # A changed redis.env makes compose recreate agent-redis anyway; otherwise say so.
        if [ "{{notify}}" = yes ] && [ "$old_redis_env" = "$(cat "$dir/redis.env")" ] \
            && [ "$(docker inspect --format '{{{{.State.Running}}' agent-redis 2>/dev/null)" = true ]; then
            echo "note: $acl changed; agent-redis reads it when it starts: just restart redis"
        fi
    fi

[private]
_check-service service:
    @case "{{service}}" in redis|orchestrator|worker) ;; *) echo "error: unknown service '{{service}}' (expected redis, orchestrator or worker)" >&2; exit 2;; esac

# Wait until `expected` containers of a compose project are running and healthy (HEALTH_TIMEOUT s)
[private]
_wait-healthy project expected:
    #!/usr/bin/env bash
    set -euo pipefail
    deadline=$((SECONDS + ${HEALTH_TIMEOUT:-120}))
    filter="label=com.docker.compose.project={{project}}"
    while true; do
        healthy=$(docker ps -q --filter "$filter" --filter health=healthy | wc -l)
        [ "$healthy" -ge "{{expected}}" ] && exit 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "error: {{project}}: $healthy of {{expected}} containers healthy after ${HEALTH_TIMEOUT:-120}s" >&2
            docker ps -a --filter "$filter" --format "{{ps_format}}" >&2
            for id in $(docker ps -aq --filter "$filter"); do docker logs --tail 20 "$id" >&2 || true; done
            exit 1
        fi
        sleep 1
    done

# Benchmark a local system (redis-server with appendfsync everysec and always, release builds as processes; about 6 min); writes docs/benchmarks.md and .json. Options: `just bench --help`
bench *args: _require-redis-server
    #!/usr/bin/env bash
    set -euo pipefail
    if ! command -v wrk >/dev/null 2>&1; then
        if [ "$(id -u)" -ne 0 ]; then echo "error: wrk is missing; install it with: sudo apt-get install -y wrk" >&2; exit 1; fi
        echo "installing wrk (Debian package)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    fi
    command -v redis-benchmark >/dev/null 2>&1 || { echo "error: redis-benchmark is missing (Debian: apt-get install -y redis-tools)" >&2; exit 1; }
    cargo build --release -p orchestrator -p worker -p xtask --bins
    "${CARGO_TARGET_DIR:-target}/release/xtask" bench --bin-dir "${CARGO_TARGET_DIR:-target}/release" {{args}}
