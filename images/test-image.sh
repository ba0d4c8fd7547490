#!/usr/bin/env bash
# Build the service image for real with podman and prove it serves: /healthz over HTTPS and
# `redis-cli --tls` AUTH/PING/SET/GET against the running container. Then remove what it created.
#
# The image is built from images/service/Dockerfile unchanged, with the overrides a host without a
# registry or a GPU needs: BASE_IMAGE is a Debian bookworm image made here by debootstrap
# (images/local-base.sh), torch is a CPU wheel, and pip installs from a wheelhouse filled on the host.
# Prints one line of timings and the image size at the end.
#
# usage: images/test-image.sh
# env:   KEEP_IMAGES=1   keep the image and build layers (faster reruns while editing)
#        TORCH_WHEEL     CPU torch wheel to install (default: the newest /opt/wheels/torch-*+cpu-cp311-*.whl,
#                        else torch 2.13.0+cpu from the PyTorch CPU index)
#        HOST_CA_BUNDLE  CA bundle pip trusts inside the build (default /etc/ssl/certs/ca-certificates.crt)
#        FORESIGHT_IMAGES_CACHE  debootstrap tarball, wheelhouse, build log (default ~/.cache/foresight/images)
#        PYTHON          a Python 3.11 with pip and packaging, to fill the wheelhouse (default: the project's
#                        .venv, else python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

run_id="t$$"
base_image="localhost/foresight-base:bookworm"
image="localhost/foresight:test-$run_id"
container="foresight-test-$run_id"
keep="${KEEP_IMAGES:-0}"
work="$(mktemp -d)"
cache_dir="${FORESIGHT_IMAGES_CACHE:-$HOME/.cache/foresight/images}"
started_at=$SECONDS

log() { printf '[test-image %4ss] %s\n' "$((SECONDS - started_at))" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
now() { date +%s.%N; }
stamp() { local t=$SECONDS line; while IFS= read -r line; do printf '%4ss %s\n' "$((SECONDS - t))" "$line"; done; }
# Without systemd, podman cannot schedule HEALTHCHECK timers and says so on every run/stop; the checks
# below run the health check on demand instead.
no_timer_noise() { grep -v 'unable to get systemd connection' >&2 || true; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]] && podman container exists "$container" 2>/dev/null; then
    log "container log (last 40 lines):"
    podman logs --tail 40 "$container" >&2 || true
  fi
  podman rm --force --time 0 "$container" >/dev/null 2>&1 || true
  if [[ "$keep" != 1 ]]; then
    podman rmi --force "$image" >/dev/null 2>&1 || true
    podman rmi "$base_image" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

for tool in podman debootstrap openssl redis-cli curl; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install podman buildah runc debootstrap openssl redis-tools curl)"
done

# --- base image --------------------------------------------------------------------------------
t0=$(now)
"$here/local-base.sh" "$base_image" >/dev/null
base_s=$(elapsed "$t0" "$(now)")
log "base image $base_image ready in ${base_s}s"

# --- build -------------------------------------------------------------------------------------
# Everything the build borrows from this host sits in one directory mounted at /mnt for RUN steps only
# (/mnt exists in the base image, so the mount leaves no mount point in a layer): a pip.conf that makes
# pip install from a wheelhouse filled here once (the CPU torch wheel with its dependencies, and the files
# of images/service/requirements.lock), and the host CA bundle. The Dockerfile is the one a real build
# uses; only PIP_CONFIG_FILE and TORCH_SPEC differ.
buildenv="$cache_dir/buildenv"
wheels="$buildenv/wheels"
python="${PYTHON:-}"
[[ -z "$python" && -x "$repo/.venv/bin/python" ]] && python="$repo/.venv/bin/python"
python="${python:-python3}"
torch_wheel="${TORCH_WHEEL:-$(find /opt/wheels -maxdepth 1 -name 'torch-*+cpu-cp311-*.whl' 2>/dev/null | sort -V | tail -n 1)}"
if [[ -n "$torch_wheel" ]]; then
  torch_version="$(basename "$torch_wheel")"
  torch_version="${torch_version#torch-}"
  torch_version="${torch_version%%-*}"
  torch_source=("$torch_wheel")
else
  torch_version="2.13.0+cpu"
  torch_source=(--extra-index-url https://download.pytorch.org/whl/cpu "torch==$torch_version")
fi
# pip download evaluates the lock's markers with the Python that downloads, not --python-version, so the
# entries are chosen here for the base image's own python3 (Debian's 3.11.2 needs async-timeout, a newer 3.11
# does not), asked inside that image.
lock_tool="$repo/images/service/lock.py"
podman run --rm -i --network none "$base_image" python3 - environment < "$lock_tool" > "$work/environment.json"
"$python" "$lock_tool" select "$work/environment.json" > "$work/requirements.txt" \
  || fail "$python cannot read the lock (it needs packaging; set PYTHON)"
stamp_file="$wheels/.filled-for-$( (cat "$work/requirements.txt"; echo "$torch_version") | sha256sum | cut -c1-16)"
wheelhouse_s=0
if [[ ! -f "$stamp_file" ]]; then
  log "filling the wheelhouse $wheels"
  t0=$(now)
  rm -rf "$wheels" && mkdir -p "$wheels"
  # torch with the dependencies it names, as the Dockerfile's torch layer installs it; then the lock's files,
  # every one checked against its hash (two runs: --require-hashes would ask a hash of the torch wheel too).
  { "$python" -m pip download --only-binary=:all: --python-version 3.11 --dest "$wheels" "${torch_source[@]}" \
    && "$python" -m pip download --only-binary=:all: --python-version 3.11 --dest "$wheels" \
         --require-hashes --no-deps --requirement "$work/requirements.txt"; } >"$cache_dir/wheelhouse.log" 2>&1 \
    || { tail -n 30 "$cache_dir/wheelhouse.log" >&2; fail "pip download failed (log: $cache_dir/wheelhouse.log)"; }
  touch "$stamp_file"
  wheelhouse_s=$(elapsed "$t0" "$(now)")
  log "wheelhouse filled in ${wheelhouse_s}s"
fi
cp "${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}" "$buildenv/ca.crt"
printf '[global]\nno-index = true\nfind-links = /mnt/wheels\ncert = /mnt/ca.crt\n' > "$buildenv/pip.conf"
build_args=(--build-arg PIP_CONFIG_FILE=/mnt/pip.conf --build-arg "TORCH_SPEC=torch==$torch_version")

layers=(--layers=false)
[[ "$keep" == 1 ]] && layers=(--layers=true)
revision="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"

build_log="$cache_dir/build.log"
log "building $image (torch $torch_version)"
t0=$(now)
podman build "${layers[@]}" --format docker --file "$here/service/Dockerfile" --tag "$image" \
  --build-arg "BASE_IMAGE=$base_image" \
  --build-arg "REVISION=$revision" \
  --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  --volume "$buildenv:/mnt:ro" "${build_args[@]}" \
  "$repo" 2>&1 | stamp >"$build_log" || { tail -n 60 "$build_log" >&2; fail "podman build failed (log: $build_log)"; }
build_s=$(elapsed "$t0" "$(now)")
size_bytes=$(podman image inspect --format '{{.Size}}' "$image")
log "built in ${build_s}s, $((size_bytes / 1000000)) MB"

# --- what the image is ------------------------------------------------------------------------
inspect() { podman image inspect --format "$1" "$image"; }
[[ "$(inspect '{{.Config.User}}')" == "10001:10001" ]] || fail "image does not run as the non-root user"
[[ "$(inspect '{{json .Config.Entrypoint}}')" == *'/usr/bin/tini'* ]] || fail "tini is not the entrypoint"
[[ "$(inspect '{{json .Config.Healthcheck}}')" == *healthcheck.py* ]] || fail "no HEALTHCHECK in the image"
[[ "$(inspect '{{index .Labels "org.opencontainers.image.title"}}')" == foresight ]] || fail "OCI labels missing"
exposed="$(inspect '{{json .Config.ExposedPorts}}')"
[[ "$exposed" == *6380/tcp* && "$exposed" == *8443/tcp* ]] || fail "ports 6380/8443 not exposed: $exposed"
# No build-time mount and no private key anywhere in the image's file system.
in_image() { podman run --rm --no-healthcheck --user 0 --entrypoint /bin/bash "$image" -c "$1"; }
# shellcheck disable=SC2016 # expands inside the image
in_image 'test -z "$(ls -A /mnt)" && test ! -e /etc/pip.conf' || fail "a build-time mount left a trace in the image"
# Third-party site-packages carry PEM markers in code and doc examples; everything else must have none.
# shellcheck disable=SC2016
in_image 'cd /opt/foresight/lib/python3*/site-packages && ours=$(ls -d service onboarding marketplace stacks 2>/dev/null)
          grep -rlE --exclude-dir=site-packages -e "-----BEGIN ([A-Z]+ )?PRIVATE KEY-----" \
            /etc /root /var/lib/foresight /opt/foresight $ours
          test $? -eq 1' || fail "the image holds a private key (files listed above)"
if podman history --no-trunc --format '{{.CreatedBy}}' "$image" | grep -qiE 'PRIVATE KEY|fsk_[a-z2-7]{12}_'; then
  fail "a secret appears in the image history"
fi
log "image checks passed: non-root, tini, HEALTHCHECK, OCI labels, ports, no keys in layers"

# --- throwaway TLS and tenant key -------------------------------------------------------------
mkdir -p "$work/conf"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=foresight test CA" \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$work/conf/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$work/ext.cnf"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial -days 1 \
  -extfile "$work/ext.cnf" -out "$work/conf/server.crt" 2>/dev/null
# Each cloud's KMS provider finds its SDK: a node on AWS, Google Cloud or Azure runs this same image.
podman run --rm --no-healthcheck --entrypoint /opt/foresight/bin/python "$image" -c '
import boto3, google.cloud.kms, azure.keyvault.keys, azure.identity
' || fail "a cloud KMS SDK is missing from the image"
# The image's own code mints the key, so the test needs nothing installed on the host.
podman run --rm --no-healthcheck --entrypoint /opt/foresight/bin/python "$image" -c '
import json
from service.security.apikeys import new_key
key = new_key()
print(key.secret)
print(json.dumps({"tenants": [{"name": "demo"}],
                  "keys": [{"key_id": key.key_id, "tenant": "demo", "hash": key.key_hash}]}))
' > "$work/minted"
api_key="$(sed -n 1p "$work/minted")"
sed -n 2p "$work/minted" > "$work/conf/tenants.json"
rm -f "$work/minted"
mkdir -m 0700 "$work/data"
chown -R 10001:10001 "$work/conf" "$work/data"
chmod 0500 "$work/conf"
chmod 0400 "$work/conf"/*

# --- run and wait for ready -------------------------------------------------------------------
log "starting $container"
t0=$(now)
podman run --detach --name "$container" \
  --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
  --publish 127.0.0.1::6380 --publish 127.0.0.1::8443 \
  --volume "$work/conf:/etc/foresight:ro" \
  --env FORESIGHT_TLS_CERT_FILE=/etc/foresight/server.crt \
  --env FORESIGHT_TLS_KEY_FILE=/etc/foresight/server.key \
  --env FORESIGHT_TENANTS_FILE=/etc/foresight/tenants.json \
  --volume "$work/data:/var/lib/foresight" \
  "$image" 2> >(no_timer_noise) >/dev/null
resp_port="$(podman port "$container" 6380/tcp | sed 's/.*://')"
https_port="$(podman port "$container" 8443/tcp | sed 's/.*://')"
healthz="https://localhost:$https_port/healthz"
ready=0
for _ in $(seq 1 600); do
  if curl -fsS --cacert "$work/ca.crt" --max-time 2 "$healthz" >/dev/null 2>&1; then ready=1; break; fi
  [[ "$(podman inspect --format '{{.State.Running}}' "$container")" == true ]] || fail "container exited"
  sleep 0.2
done
[[ $ready == 1 ]] || fail "/healthz not ready after 120s"
ready_s=$(elapsed "$t0" "$(now)")
log "ready in ${ready_s}s: $healthz answers 200 with a certificate from the test CA"

podman healthcheck run "$container" >/dev/null || fail "the image's own HEALTHCHECK reports unhealthy"
[[ "$(podman exec "$container" id -u)" == 10001 ]] || fail "the service does not run as uid 10001"
[[ "$(podman exec "$container" cat /proc/1/comm)" == tini ]] || fail "PID 1 is not tini"

# --- RESP over TLS ----------------------------------------------------------------------------
rcli() { redis-cli --tls --cacert "$work/ca.crt" -h 127.0.0.1 -p "$resp_port" --no-raw "$@"; }
# `want` is a glob: error replies are matched on their code.
expect() {
  local want="$1" got
  shift
  got="$(rcli "$@" 2>&1)"
  # shellcheck disable=SC2053
  [[ "$got" == $want ]] || fail "redis-cli $* answered '$got', expected '$want'"
}
expect '(error) NOAUTH*' GET greeting
expect '(error) WRONGPASS*' AUTH fsk_aaaaaaaaaaaa_not-a-real-key-at-all-xxxxxxxxxxxxxxxxxxxxxx
export REDISCLI_AUTH="$api_key"
expect PONG PING
expect OK SET greeting "hello from the image"
expect '"hello from the image"' GET greeting
unset REDISCLI_AUTH
log "redis-cli --tls: NOAUTH before AUTH, WRONGPASS for a bad key, PING/SET/GET with the tenant key"

# --- graceful stop ----------------------------------------------------------------------------
t0=$(now)
podman stop --time 30 "$container" 2> >(no_timer_noise) >/dev/null
stop_s=$(elapsed "$t0" "$(now)")
exit_code="$(podman inspect --format '{{.State.ExitCode}}' "$container")"
[[ "$exit_code" == 0 ]] || fail "SIGTERM ended the service with exit code $exit_code, not 0"
log "SIGTERM drained and exited 0 in ${stop_s}s"

printf 'base_image_s=%s wheelhouse_s=%s build_s=%s image_bytes=%s cold_start_to_ready_s=%s stop_s=%s total_s=%s\n' \
  "$base_s" "$wheelhouse_s" "$build_s" "$size_bytes" "$ready_s" "$stop_s" "$((SECONDS - started_at))"
