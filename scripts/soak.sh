#!/usr/bin/env bash
# Soak the local deployment: `foresight local up` (OpenBao, TLS, transit KMS, audit log, learned prefetcher), three
# tenants under redis-benchmark (GET and SET, 200,000 random keys of 256 bytes, -P 4), and one client reconnecting
# with TLS and AUTH for every request, for SECONDS (default 600). Every 15 s it prints the service's resident
# memory, open descriptors and threads: a leak is a column that keeps growing once the caches are full.
# Usage: scripts/soak.sh [SECONDS] [NAME=VALUE ...]  (service settings for `local up --set`, e.g. audit_rotate_mb=1)
# Needs `scripts/setup.sh test` (redis-tools). Everything lives in a temporary state directory, removed at the end.
# The tenants' keys go to redis-benchmark with -a (it reads no environment variable for them): throwaway keys of
# a throwaway deployment, deleted with it, but visible in `ps` meanwhile; run it on a machine of your own.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift $(( $# > 0 ? 1 : 0 ))
settings=()
for pair in "$@"; do settings+=(--set "$pair"); done
py=.venv/bin/python
foresight=.venv/bin/foresight
state=$(mktemp -d)
export XDG_STATE_HOME=$state

field() { "$py" -c "import json, sys; print(json.load(sys.stdin)$1)"; }
cleanup() {
  jobs -p | xargs -r kill 2>/dev/null || true
  "$foresight" local down >/dev/null 2>&1 || true
  rm -rf "$state"
}
trap cleanup EXIT

up=$("$foresight" local up --resp-port 0 --http-port 0 --vault-port 0 --no-demo --json "${settings[@]}")
port=$(field '["resp_port"]' <<<"$up")
ca=$(field '["ca_cert"]' <<<"$up")
keys=("$(field '["api_key"]' <<<"$up")")
for tenant in soak-b soak-c; do
  keys+=("$("$foresight" tenants create "$tenant" --plan pro --json | field '["api_key"]')")
done
pid=$("$foresight" local status --json | field '["processes"]["service"]["pid"]')

end=$(( $(date +%s) + seconds ))
for key in "${keys[@]}"; do
  # A tenant's rate limit ends a redis-benchmark run with an error: start another until the time is up.
  (while [ "$(date +%s)" -lt "$end" ]; do
     redis-benchmark --tls --cacert "$ca" -p "$port" -a "$key" -t get,set -r 200000 -d 256 -n 200000 -c 10 -P 4 \
       -q >/dev/null 2>&1 || true
   done) &
done
(while [ "$(date +%s)" -lt "$end" ]; do
   redis-benchmark --tls --cacert "$ca" -p "$port" -a "${keys[0]}" -t get -r 1000 -n 2000 -c 5 -k 0 -q \
     >/dev/null 2>&1 || true
 done) &

start=$(date +%s)
sample() {
  local rss fds threads
  rss=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")
  threads=$(awk '/Threads/{print $2}' "/proc/$pid/status")
  fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
  echo "$(( $(date +%s) - start )) $rss $fds $threads ${1:-}"
}
echo "seconds rss_kb fds threads"
while [ "$(date +%s)" -lt "$end" ]; do
  sample
  sleep 15
done
wait
sample "(load over)"
sleep 30
sample "(idle 30 s)"
audit=$state/foresight/audit
echo "audit log: $(wc -l <"$audit/service.jsonl") lines in the live file, $(find "$audit" -name '*.fse' | wc -l)" \
     "archives, $(du -sh "$audit" | cut -f1) in all"
