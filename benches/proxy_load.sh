#!/usr/bin/env bash
# Load benchmark: SIPp UAC -> stirscreen serve -> SIPp UAS on 127.0.0.1, every
# INVITE carrying a distinct freshly signed PASSporT (verification on for
# every call; the credential is the pinned demo one, i.e. cached). The rate
# ramps; for each step: successful and failed calls, unexpected messages,
# p50/p99 INVITE->200 at the UAC, and the proxy's CPU time per call. A rate is
# held when every call completed, none failed and p99 < 10 ms. The same
# harness then runs SIPp UAC -> SIPp UAS directly (the harness ceiling).
#   usage: benches/proxy_load.sh [RATES] [SECONDS]
#   e.g.   benches/proxy_load.sh "1000 2000 3000 4000 5000" 30
set -euo pipefail
cd "$(dirname "$0")/.."
rates=${1:-"1000 2000 3000 4000 5000 6000"}
secs=${2:-30}
command -v sipp >/dev/null || { echo "install sipp: apt-get install -y sip-tester"; exit 1; }
cargo build --release --quiet
bin=$PWD/target/release/stirscreen
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; pkill -f "sipp -sf tests/sipp/uas.xml" 2>/dev/null || true; rm -rf "$work"; }
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
  local uas_pid; uas_pid=$(printf '%s' "$out" | sed -n 's/.*PID=\[\([0-9]*\)\].*/\1/p')
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
rm -f stirscreen.db stirscreen.db-wal stirscreen.db-shm decisions.jsonl*
# STIRSCREEN_CONFIG=file runs serve with a config file instead of the
# embedded default; it must keep the default's [fetch.pinned] entry for
# https://sti.stirscreen.example/sp-a.pem, or every call fails verification
# (x5u-unreachable) and the figures no longer include ECDSA.
"$bin" serve ${STIRSCREEN_CONFIG:+--config "$STIRSCREEN_CONFIG"} >"$work/serve.log" 2>&1 &
serve_pid=$!
pids+=("$serve_pid")
sleep 1
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

ramp 5060 "uac->stirscreen->uas"
kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true
serve_pid=""
echo "highest rate held for ${secs}s through stirscreen: $best calls/s"
# Every screened call must have been verified (ECDSA), not failed early.
# (503s for overload are not screened; SIPp counts them as failed calls.)
sleep 0.2
overload=$(cat decisions.jsonl* 2>/dev/null | grep -c '"action":"overload"' || true)
total=$(( $(cat decisions.jsonl* 2>/dev/null | wc -l) - overload ))
passed=$(cat decisions.jsonl* 2>/dev/null | grep -c '"verstat":"TN-Validation-Passed"' || true)
echo "decision log: $passed of $total screened calls TN-Validation-Passed (verified with ECDSA); $overload answered 503 unscreened"
if [ "$total" -le 0 ] || [ "$passed" != "$total" ]; then
  echo "not every call was verified: the figures above do not measure verification"
  exit 1
fi
[ -n "${SKIP_CEILING:-}" ] && exit 0
ramp 5080 "uac->uas (ceiling)"
echo "highest rate held for ${secs}s directly (harness ceiling): $best calls/s"
