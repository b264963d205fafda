#!/usr/bin/env bash
# Build the evo image (Containerfile) with podman and run it for real:
#   build    the image (and, where no registry can be reached, stand-ins for the
#            python:3.11-slim and postgres bases), then its size;
#   serve    tests/test_container.py: `llm train` and `llm serve` in the image as a
#            non-root user, /health, the image's health check, a chat completion through
#            the OpenAI SDK;
#   compose  compose.yaml up (Ray head and worker, PostgreSQL, the dashboard), a short
#            search (scripts/container_search.yaml) driven from the Ray head, its trials
#            read back through the dashboard's API, then down.
# Usage: scripts/container_check.sh [build] [serve] [compose]   (none: all three)
# Needs root, podman and runc; debootstrap for the stand-in base; podman-compose for
# compose; for serve, a Python with the project's dev extra (PYTHON, default python).
# Settings (environment): IMAGE (localhost/evo:latest), BASE, POSTGRES_IMAGE, TORCH (cpu or
# cuda), TORCH_WHEEL (a torch wheel to install instead of the index's), PIP_CERT (a CA
# bundle for pip inside the build), PODMAN_COMPOSE, DASHBOARD_PORT (18080).
set -euo pipefail
cd "$(dirname "$0")/.."

# podman's settings and image store for this project (see the files): overlay storage,
# or vfs where overlay cannot mount.
export CONTAINERS_CONF=$PWD/scripts/podman/containers.conf
export CONTAINERS_STORAGE_CONF=$PWD/scripts/podman/storage.conf
if ! podman info >/dev/null 2>&1; then
    echo "podman cannot use overlay storage here: using vfs (a full copy per layer)" >&2
    export CONTAINERS_STORAGE_CONF=$PWD/scripts/podman/storage-vfs.conf
fi

STANDIN_BASE=localhost/python-standin:3.11-bookworm
STANDIN_POSTGRES=localhost/postgres-standin:bookworm
IMAGE=${IMAGE:-localhost/evo:latest}
BASE=${BASE:-$STANDIN_BASE}
POSTGRES_IMAGE=${POSTGRES_IMAGE:-$STANDIN_POSTGRES}
TORCH=${TORCH:-cpu}
PYTHON=${PYTHON:-python}
PODMAN_COMPOSE=${PODMAN_COMPOSE:-podman-compose}
DASHBOARD_PORT=${DASHBOARD_PORT:-18080}
STORAGE_URL=postgresql+psycopg://evo@postgres/evo

step() { printf '\n== %s\n' "$*"; }
die() {
    echo "container_check: $*" >&2
    exit 1
}

# python:3.11-slim's stand-in: Debian bookworm's Python 3.11 in a minimal root.
make_standin_base() {
    podman image exists "$STANDIN_BASE" && return
    command -v debootstrap >/dev/null || die "no image $STANDIN_BASE and no debootstrap to make it"
    step "making $STANDIN_BASE with debootstrap"
    local root
    root=$(mktemp -d)
    chmod 755 "$root" # mktemp makes it 700: the image's / would shut out its non-root user
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | podman import --change 'CMD ["python3"]' - "$STANDIN_BASE"
    rm -rf "$root"
}

# The torch wheel to build with: TORCH_WHEEL, else a CPU wheel for Python 3.11 (the bases'
# Python) in one of pip's --find-links folders; none: the build uses PyTorch's CPU index.
torch_wheel() {
    if [ -n "${TORCH_WHEEL:-}" ]; then
        echo "$TORCH_WHEEL"
    elif [ "$TORCH" = cpu ]; then
        local folders
        folders=$(echo "${PIP_FIND_LINKS:-}" | tr ' ' '\n' | sed 's|^file://||')
        for folder in $folders; do
            ls "$folder"/torch-*+cpu-cp311-cp311-*x86_64.whl 2>/dev/null || true
        done | sort -V | tail -n 1
    fi
}

build() {
    [ "$BASE" = "$STANDIN_BASE" ] && make_standin_base
    local args=(--format docker --build-arg "BASE=$BASE" --build-arg "TORCH=$TORCH" -t "$IMAGE")
    local wheel wheels=""
    wheel=$(torch_wheel)
    if [ -n "$wheel" ]; then
        wheels=$(mktemp -d)
        ln "$wheel" "$wheels/" 2>/dev/null || cp "$wheel" "$wheels/"
        args+=(--build-context "torch-wheels=$wheels")
    fi
    local ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
    [ -s "$ca" ] && args+=(--secret "id=pip-ca,src=$ca")
    step "building $IMAGE (BASE=$BASE TORCH=$TORCH torch wheel: ${wheel:-from the index})"
    local start=$SECONDS
    podman build "${args[@]}" .
    echo "built in $((SECONDS - start)) s"
    [ -n "$wheels" ] && rm -rf "$wheels"
    if [ "$POSTGRES_IMAGE" = "$STANDIN_POSTGRES" ]; then
        step "building $STANDIN_POSTGRES"
        podman build --build-arg "BASE=$BASE" -t "$STANDIN_POSTGRES" scripts/postgres-standin
    fi
    step "image size"
    podman images --filter "reference=$IMAGE" --filter "reference=$BASE"
    podman image inspect --format '{{.Size}}' "$IMAGE" |
        awk '{printf "'"$IMAGE"': %d bytes = %.2f GB\n", $1, $1 / 1e9}'
}

serve() {
    step "serving: tests/test_container.py against $IMAGE"
    EVO_IMAGE=$IMAGE "$PYTHON" -m pytest -m container -p no:randomly -s -v \
        tests/test_container.py
}

compose_down() {
    "${compose[@]}" down --volumes >/dev/null 2>&1 || true
    # podman-compose 1.0 leaves the network; reused, its DNS no longer resolved the
    # services' names (the Ray head could not find postgres).
    podman network rm --force evo-check_default >/dev/null 2>&1 || true
}

# GET a dashboard API route with the token, printing the body.
dashboard_get() {
    curl -fsS -H "Authorization: Bearer $EVO_DASHBOARD_TOKEN" \
        "http://127.0.0.1:$DASHBOARD_PORT$1"
}

dashboard_failed() {
    "${compose[@]}" logs dashboard 2>&1 | tail -n 40
    die "the dashboard's API failed (its log above)"
}

compose() {
    command -v "$PODMAN_COMPOSE" >/dev/null || die "no $PODMAN_COMPOSE (apt-get install podman-compose)"
    compose=("$PODMAN_COMPOSE" -f compose.yaml -p evo-check)
    export EVO_IMAGE=$IMAGE POSTGRES_IMAGE DASHBOARD_PORT
    POSTGRES_PASSWORD=$(head -c 12 /dev/urandom | base64 | tr -d '/+=')
    EVO_DASHBOARD_TOKEN=$(head -c 12 /dev/urandom | base64 | tr -d '/+=')
    export POSTGRES_PASSWORD EVO_DASHBOARD_TOKEN
    step "compose up: $("$PODMAN_COMPOSE" version 2>/dev/null | head -n 1)"
    compose_down # what an interrupted check left
    trap compose_down EXIT
    "${compose[@]}" up -d
    step "waiting for the dashboard (it starts once evo's tables exist)"
    local start=$SECONDS
    until dashboard_get /api/runs >/dev/null 2>&1; do
        [ $((SECONDS - start)) -lt 300 ] || {
            "${compose[@]}" ps
            "${compose[@]}" logs
            die "the dashboard did not answer within 300 s"
        }
        sleep 3
    done
    echo "dashboard up after $((SECONDS - start)) s: $(dashboard_get /api/runs)"
    "${compose[@]}" ps
    step "a search driven from the Ray head"
    local head
    head=$(podman ps --format '{{.Names}}' --filter label=com.docker.compose.project=evo-check \
        --filter label=com.docker.compose.service=ray-head)
    podman cp scripts/container_search.yaml "$head:/data/container_search.yaml"
    start=$SECONDS
    "${compose[@]}" exec -T ray-head evo run /data/container_search.yaml --address auto \
        --storage "$STORAGE_URL" --quiet
    echo "search done in $((SECONDS - start)) s"
    step "the run through the dashboard's API"
    dashboard_get /api/runs/container_search || dashboard_failed
    echo
    local trials
    trials=$(dashboard_get /api/runs/container_search/trials) || dashboard_failed
    echo "$trials" | "$PYTHON" scripts/container_trials.py
    compose_down
    trap - EXIT
}

main() {
    [ "$(id -u)" = 0 ] || die "run as root: the checks use rootful podman"
    command -v podman >/dev/null || die "no podman (apt-get install podman runc)"
    local steps=("$@")
    [ ${#steps[@]} -gt 0 ] || steps=(build serve compose)
    for name in "${steps[@]}"; do
        case "$name" in
            build | serve | compose) "$name" ;;
            *) die "unknown step '$name': build, serve or compose" ;;
        esac
    done
}

main "$@"
