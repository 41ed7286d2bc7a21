#!/usr/bin/env bash
# Load benchmark: SIPp UAC -> stirscreen serve -> SIPp UAS on 127.0.0.1, every
# INVITE carrying a distinct freshly signed PASSporT (verification on for
# every call; the credential is the pinned demo one, i.e. cached). The rate
# ramps; for each step: successful and failed calls, unexpected messages,
# p50/p99 INVITE->200 at the UAC, and the proxy's CPU time per call. A rate is
# held when every call completed, none failed and p99 < 10 ms. The same
# harness then runs SIPp UAC -> SIPp UAS directly (the harness ceiling).
#   usage: [BACKENDS="embedded redis"] benches/proxy_load.sh [RATES] [SECONDS]
#   e.g.   benches/proxy_load.sh "1000 2000 3000 4000 5000" 30
#          BACKENDS="embedded redis" SKIP_CEILING=1 benches/proxy_load.sh 3000 30
#          BIN=/tmp/stirscreen-glibc SKIP_CEILING=1 benches/proxy_load.sh 3000 20
# BACKENDS lists the state backends to measure, one after the other in the
# same run; `redis` starts its own redis-server (AOF on, everysec) on a free
# loopback port and stops it by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
rates=${1:-"1000 2000 3000 4000 5000 6000"}
secs=${2:-30}
command -v sipp >/dev/null || { echo "install sipp: apt-get install -y sip-tester"; exit 1; }
if [ -n "${BIN:-}" ]; then
  bin=$(readlink -f "$BIN")   # a given build (e.g. to compare allocators)
else
  cargo build --release --quiet
  bin=$PWD/target/release/stirscreen
fi
work=$(mktemp -d)
pids=()
uas_pid=""
cleanup() { kill "${pids[@]}" $uas_pid 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# p50 p99 (ms) from SIPp's per-call response-time file (column 2: INVITE→200
# in whole milliseconds, so 0 means under 1 ms).
percentiles() {
  awk -F';' 'NR > 1 && $2 != "" {print $2}' "$1" 2>/dev/null | sort -n | awk '
    {v[NR] = $1} END { if (NR == 0) { print "- -"; exit }
      p50 = v[int(NR * 0.50) > 0 ? int(NR * 0.50) : 1]; p99 = v[int(NR * 0.99) > 0 ? int(NR * 0.99) : 1];
      printf "%d %d\n", p50, p99 }'
}

run_step() { # target_port rate label
  local port=$1 rate=$2 label=$3 calls=$(( $2 * secs ))
  "$bin" sign --key certs/demo/sp-a.key --x5u https://sti.stirscreen.example/sp-a.pem \
    --orig 12155551212 --dest 12125551213 --attest A --sipp-csv "$calls" >"$work/calls.csv"
  rm -f "$work"/uas-screen.log "$work"/*_rtt.csv
  out=$(sipp -sf tests/sipp/uas.xml -i 127.0.0.1 -p 5080 -m "$calls" -buff_size 4194304 -bg -trace_screen -screen_file "$work/uas-screen.log" 2>&1 || true)
  uas_pid=$(printf '%s' "$out" | sed -n 's/.*PID=\[\([0-9]*\)\].*/\1/p')
  sleep 0.3
  local t0=0; [ -n "${serve_pid:-}" ] && t0=$(cpu_ticks "$serve_pid")
  set +e
  (cd "$work" && sipp "127.0.0.1:$port" -sf "$OLDPWD/tests/sipp/uac.xml" -inf "$work/calls.csv" -i 127.0.0.1 -p 5070 -buff_size 4194304 \
    -r "$rate" -rate_max "$rate" -m "$calls" -l $(( rate * 2 )) -timeout $(( secs + 30 ))s -timeout_error \
    -trace_stat -stf "$work/stat.csv" -trace_rtt -rtt_freq 100 -trace_screen -screen_file "$work/uac-screen.log" >/dev/null 2>&1)
  local rc=$?
  set -e
  local t1=0; [ -n "${serve_pid:-}" ] && t1=$(cpu_ticks "$serve_pid")
  for _ in $(seq 100); do kill -0 "$uas_pid" 2>/dev/null || break; sleep 0.1; done
  kill "$uas_pid" 2>/dev/null || true
  uas_pid=""
  local ok failed unexpected
  ok=$(awk -F'|' '/Successful call/ {gsub(/ /, "", $3); print $3; exit}' "$work/uac-screen.log")
  failed=$(awk -F'|' '/Failed call/ {gsub(/ /, "", $3); print $3; exit}' "$work/uac-screen.log")
  unexpected=$(awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "FailedUnexpectedMessage(C)") c = i } END { }
                          NR > 1 && c { v = $c } END { print v + 0 }' "$work/stat.csv" 2>/dev/null || echo "?")
  read -r p50 p99 < <(percentiles "$(ls "$work"/*_rtt.csv 2>/dev/null | head -1)")
  local hz; hz=$(getconf CLK_TCK)
  local cpu_us="-"
  if [ -n "${serve_pid:-}" ] && [ "${ok:-0}" -gt 0 ]; then
    cpu_us=$(awk -v d="$(( t1 - t0 ))" -v hz="$hz" -v n="$ok" 'BEGIN { printf "%.0f", d / hz * 1e6 / n }')
  fi
  # Held: every call completed, none failed, and p99 INVITE->200 < 10 ms.
  local held="no"
  [ "$rc" = 0 ] && [ "${failed:-1}" = 0 ] && [ "${ok:-0}" = "$calls" ] && [ "$p99" != "-" ] && [ "$p99" -lt 10 ] && held="yes"
  printf "%-22s %7s %9s %9s %7s %10s %10s %12s %5s\n" "$label" "$rate" "${ok:-?}" "${failed:-?}" "$unexpected" "$p50" "$p99" "$cpu_us" "$held"
}

printf "%-22s %7s %9s %9s %7s %10s %10s %12s %5s\n" "path" "calls/s" "completed" "failed" "unexp" "p50 ms" "p99 ms" "proxy us/call" "held"
# ramp PORT LABEL: each rate in turn until one is not held; prints the rows
# and sets $best to the highest rate held.
ramp() {
  best=0
  for r in $rates; do
    line=$(run_step "$1" "$r" "$2")
    echo "$line"
    case "$line" in *yes) best=$r ;; *) break ;; esac
  done
}

for backend in ${BACKENDS:-embedded}; do
  rm -f stirscreen.db stirscreen.db-wal stirscreen.db-shm decisions.jsonl*
  config=${STIRSCREEN_CONFIG:-}
  redis_pid=""
  if [ "$backend" = redis ]; then
    command -v redis-server >/dev/null || { echo "install redis-server: apt-get install -y redis-server"; exit 1; }
    rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    mkdir -p "$work/redis"
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync everysec \
      --dir "$work/redis" --daemonize no --loglevel warning >"$work/redis.log" 2>&1 &
    redis_pid=$!
    pids+=("$redis_pid")
    for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
    # The embedded default (or STIRSCREEN_CONFIG) with the Redis backend.
    config="$work/redis.toml"
    if [ -n "${STIRSCREEN_CONFIG:-}" ]; then cp "$STIRSCREEN_CONFIG" "$config"; else cp src/default.toml "$config"; fi
    # Relative paths in a config file resolve against its directory: point
    # them at the repository (inputs) and the working directory (outputs).
    sed -i -e "s|\"certs/|\"$PWD/certs/|g; s|\"policies/|\"$PWD/policies/|g" \
      -e "s|^path = \"stirscreen.db\"|path = \"$PWD/stirscreen.db\"|; s|^decisions = \"decisions.jsonl\"|decisions = \"$PWD/decisions.jsonl\"|" "$config"
    sed -i -e '/^\[store\]/,/^\[/{/^backend *=/d;/^url *=/d}' \
      -e "s|^\[store\]|[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:$rport\"|" "$config"
  fi
  # A config file must keep the default's [fetch.pinned] entry for
  # https://sti.stirscreen.example/sp-a.pem, or every call fails
  # verification (x5u-unreachable) and the figures no longer include ECDSA.
  "$bin" serve ${config:+--config "$config"} >"$work/serve.log" 2>&1 &
  serve_pid=$!
  pids+=("$serve_pid")
  sleep 1
  kill -0 "$serve_pid" 2>/dev/null || { echo "serve did not start:"; cat "$work/serve.log"; exit 1; }
  ramp 5060 "uac->stirscreen($backend)"
  if [ "$backend" = redis ]; then
    # The per-INVITE Redis round trip, from serve's own histogram (bucket
    # upper bounds: the p50 and p99 lie at or below them).
    curl -s http://127.0.0.1:9090/metrics | awk '/^stirscreen_state_round_trip_seconds_bucket/ {
        split($1, a, "le=\""); split(a[2], b, "\""); le[n] = b[1]; c[n++] = $2 }
      END { t = c[n-1]; if (t == 0) { print "state round trip: no samples"; exit }
        for (i = 0; i < n; i++) { if (!p50 && c[i] >= t * 0.5) p50 = le[i]; if (!p99 && c[i] >= t * 0.99) p99 = le[i] }
        printf "state round trip (%d calls): p50 <= %s s, p99 <= %s s\n", t, p50, p99 }'
  fi
  kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true
  serve_pid=""
  echo "highest rate held for ${secs}s through stirscreen ($backend state): $best calls/s"
  # Every screened call must have been verified (ECDSA), not failed early.
  # (503s for overload are not screened; SIPp counts them as failed calls.)
  sleep 0.2
  overload=$(cat decisions.jsonl* 2>/dev/null | grep -c '"action":"overload"' || true)
  total=$(( $(cat decisions.jsonl* 2>/dev/null | wc -l) - overload ))
  passed=$(cat decisions.jsonl* 2>/dev/null | grep -c '"verstat":"TN-Validation-Passed"' || true)
  unavailable=$(cat decisions.jsonl* 2>/dev/null | grep -c '"state":"unavailable"' || true)
  echo "decision log: $passed of $total screened calls TN-Validation-Passed (verified with ECDSA); $overload answered 503 unscreened; $unavailable decided without the state store"
  if [ "$total" -le 0 ] || [ "$passed" != "$total" ]; then
    echo "not every call was verified: the figures above do not measure verification"
    exit 1
  fi
  if [ -n "$redis_pid" ]; then
    kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
    if [ "$unavailable" != 0 ]; then
      echo "calls were decided without Redis: the figures above do not measure the shared store"
      exit 1
    fi
  fi
done
[ -n "${SKIP_CEILING:-}" ] && exit 0
ramp 5080 "uac->uas (ceiling)"
echo "highest rate held for ${secs}s directly (harness ceiling): $best calls/s"
