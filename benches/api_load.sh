#!/usr/bin/env bash
# Load benchmark of the ATIS-1000082 HTTP API: wrk (Debian's `wrk`) POSTs
# verification requests to `stirscreen serve` on 127.0.0.1, each with a
# distinct freshly signed PASSporT (the pinned demo credential: cached), so
# every request is verified, screened by the default policy and recorded.
# Reference in the same run, same server, same tool: POSTs whose body is not
# JSON (answered 400 SVC4006 after the same header checks): the HTTP stack's
# floor without verification and screening.
#   usage: benches/api_load.sh [SECONDS] [CONNECTIONS]
#   e.g.   benches/api_load.sh 10 16
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-16}
command -v wrk >/dev/null || { echo "install wrk: apt-get install -y wrk"; exit 1; }
cargo build --release --quiet
bin=$PWD/target/release/stirscreen
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port=${PORT:-18443}
root=$PWD
cat >"$work/api.toml" <<TOML
[verify]
trust_anchors = ["$root/certs/demo/sti-root.pem"]
[fetch.pinned]
"https://sti.stirscreen.example/sp-a.pem" = "$root/certs/demo/sp-a.pem"
[proxy]
listen = []
[api]
listen = "127.0.0.1:$port"
[policy]
file = "$root/policies/default.toml"
[store]
path = "$work/api.db"
[admin]
listen = ""
[log]
level = "warn"
decisions = "$work/decisions.jsonl"
[operator]
jcard_key = "$root/certs/demo/operator.key"
TOML
"$bin" serve --config "$work/api.toml" >"$work/serve.log" 2>&1 &
serve_pid=$!
pids+=("$serve_pid")
sleep 1
# Enough distinct PASSporTs that none repeats (a repeat is a replay).
n=${TOKENS:-200000}
"$bin" sign --key certs/demo/sp-a.key --x5u https://sti.stirscreen.example/sp-a.pem \
  --orig 12155551212 --dest 12125551213 --attest A --sipp-csv "$n" | tail -n +2 | cut -d';' -f3 >"$work/tokens.txt"
cat >"$work/verify.lua" <<'LUA'
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do tokens[#tokens + 1] = line end
local thread_no, i, step = 0, 0, 1
function setup(thread)
  thread:set("first", thread_no)
  thread_no = thread_no + 1
end
function init(args)
  i = first
  step = tonumber(os.getenv("THREADS"))
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  i = i + step
  local t = tokens[(i % #tokens) + 1]
  local body = string.format('{"verificationRequest":{"from":{"tn":"12155551212"},"to":{"tn":["12125551213"]},"time":%d,"identity":"%s;info=<https://sti.stirscreen.example/sp-a.pem>;alg=ES256;ppt=shaken"}}', os.time(), t)
  return wrk.format(nil, "/stir/v1/verification", nil, body)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors_status=%d rps=%.0f p50_ms=%.2f p99_ms=%.2f\n",
    summary.requests, summary.errors.status, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
LUA
cat >"$work/floor.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = "not json"
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d non2xx=%d rps=%.0f p50_ms=%.2f p99_ms=%.2f\n",
    summary.requests, summary.errors.status, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
LUA
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
threads=2
echo "== verification: $secs s, $conns connections, $threads wrk threads"
t0=$(cpu_ticks "$serve_pid")
TOKENS_FILE="$work/tokens.txt" THREADS=$threads wrk -t"$threads" -c"$conns" -d"${secs}s" -s "$work/verify.lua" "http://127.0.0.1:$port" | tee "$work/verify.out" | grep RESULT
t1=$(cpu_ticks "$serve_pid")
reqs=$(sed -n 's/.*RESULT requests=\([0-9]*\).*/\1/p' "$work/verify.out")
awk -v t=$(( t1 - t0 )) -v r="$reqs" 'BEGIN { printf "server CPU per verification: %.1f us\n", t * 10000 / (r > 0 ? r : 1) }'
passed=$(grep -c '"verstat":"TN-Validation-Passed"' "$work/decisions.jsonl" || true)
echo "decision records with TN-Validation-Passed: $passed of $(wc -l <"$work/decisions.jsonl")"
echo "== reference (same server): body not JSON -> 400 SVC4006"
t0=$(cpu_ticks "$serve_pid")
wrk -t"$threads" -c"$conns" -d"${secs}s" -s "$work/floor.lua" "http://127.0.0.1:$port/stir/v1/verification" | tee "$work/floor.out" | grep RESULT
t1=$(cpu_ticks "$serve_pid")
reqs=$(sed -n 's/.*RESULT requests=\([0-9]*\).*/\1/p' "$work/floor.out")
awk -v t=$(( t1 - t0 )) -v r="$reqs" 'BEGIN { printf "server CPU per request: %.1f us\n", t * 10000 / (r > 0 ? r : 1) }'
