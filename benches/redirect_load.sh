#!/usr/bin/env bash
# Load benchmark of the SIP redirect server: a SIPp UAC playing an SBC
# (tests/sipp/uac-302.xml: signed INVITE -> 302 with verstat in the Contact
# -> ACK) against `stirscreen serve` with `[redirect] listen` on 127.0.0.1,
# every INVITE carrying a distinct freshly signed PASSporT (the pinned demo
# credential: cached), so every call is verified (ECDSA) and screened. The
# rate ramps; per step: completed and failed calls, p50/p99 INVITE->302 at
# the UAC, and the server's CPU time per call. A rate is held when every call
# completed, none failed and p99 < 10 ms. Reference in the same run: the same
# UAC against a SIPp UAS that answers 302 at once (tests/sipp/uas-302.xml:
# the harness ceiling, no verification).
#   usage: benches/redirect_load.sh [RATES] [SECONDS]
#   e.g.   benches/redirect_load.sh "2000 4000 6000 8000" 20
set -euo pipefail
cd "$(dirname "$0")/.."
rates=${1:-"1000 2000 4000 6000 8000"}
secs=${2:-20}
command -v sipp >/dev/null || { echo "install sipp: apt-get install -y sip-tester"; exit 1; }
cargo build --release --quiet
bin=$PWD/target/release/stirscreen
work=$(mktemp -d)
pids=()
uas_pid=""
cleanup() { kill "${pids[@]}" $uas_pid 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true
root=$PWD
cat >"$work/redirect.toml" <<TOML
[verify]
trust_anchors = ["$root/certs/demo/sti-root.pem"]
[fetch.pinned]
"https://sti.stirscreen.example/sp-a.pem" = "$root/certs/demo/sp-a.pem"
[proxy]
listen = []
[redirect]
listen = ["udp:127.0.0.1:5065"]
[policy]
file = "$root/policies/default.toml"
[store]
path = "$work/redirect.db"
[admin]
listen = ""
[log]
level = "warn"
decisions = "$work/decisions.jsonl"
[operator]
jcard_key = "$root/certs/demo/operator.key"
TOML
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
percentiles() {
  awk -F';' 'NR > 1 && $2 != "" {print $2}' "$1" 2>/dev/null | sort -n | awk '
    {v[NR] = $1} END { if (NR == 0) { print "- -"; exit }
      p50 = v[int(NR * 0.50) > 0 ? int(NR * 0.50) : 1]; p99 = v[int(NR * 0.99) > 0 ? int(NR * 0.99) : 1];
      printf "%d %d\n", p50, p99 }'
}
run_step() { # port rate label
  local port=$1 rate=$2 label=$3 calls=$(( $2 * secs ))
  "$bin" sign --key certs/demo/sp-a.key --x5u https://sti.stirscreen.example/sp-a.pem \
    --orig 12155551212 --dest 12125551213 --attest A --sipp-csv "$calls" >"$work/calls.csv"
  rm -f "$work"/*_rtt.csv "$work/uac-screen.log"
  local t0=0; [ -n "${serve_pid:-}" ] && t0=$(cpu_ticks "$serve_pid")
  set +e
  (cd "$work" && sipp "127.0.0.1:$port" -sf "$OLDPWD/tests/sipp/uac-302.xml" -inf "$work/calls.csv" -i 127.0.0.1 -p 5074 -buff_size 4194304 \
    -r "$rate" -rate_max "$rate" -m "$calls" -l $(( rate * 2 )) -timeout $(( secs + 30 ))s -timeout_error \
    -trace_rtt -rtt_freq 100 -trace_screen -screen_file "$work/uac-screen.log" >/dev/null 2>&1)
  local rc=$?
  set -e
  local t1=0; [ -n "${serve_pid:-}" ] && t1=$(cpu_ticks "$serve_pid")
  local ok failed
  ok=$(awk -F'|' '/Successful call/ {gsub(/ /, "", $3); print $3; exit}' "$work/uac-screen.log")
  failed=$(awk -F'|' '/Failed call/ {gsub(/ /, "", $3); print $3; exit}' "$work/uac-screen.log")
  read -r p50 p99 < <(percentiles "$(ls "$work"/*_rtt.csv 2>/dev/null | head -1)")
  local hz; hz=$(getconf CLK_TCK)
  local cpu_us="-"
  if [ -n "${serve_pid:-}" ] && [ "${ok:-0}" -gt 0 ]; then
    cpu_us=$(awk -v d="$(( t1 - t0 ))" -v hz="$hz" -v n="$ok" 'BEGIN { printf "%.0f", d / hz * 1e6 / n }')
  fi
  local held="no"
  [ "$rc" = 0 ] && [ "${failed:-1}" = 0 ] && [ "${ok:-0}" = "$calls" ] && [ "$p99" != "-" ] && [ "$p99" -lt 10 ] && held="yes"
  printf "%-26s %7s %9s %7s %7s %7s %13s %5s\n" "$label" "$rate" "${ok:-?}" "${failed:-?}" "$p50" "$p99" "$cpu_us" "$held"
}
printf "%-26s %7s %9s %7s %7s %7s %13s %5s\n" "path" "calls/s" "completed" "failed" "p50 ms" "p99 ms" "server us/call" "held"
ramp() { best=0; for r in $rates; do line=$(run_step "$1" "$r" "$2"); echo "$line"; case "$line" in *yes) best=$r ;; *) break ;; esac; done; }

"$bin" serve --config "$work/redirect.toml" >"$work/serve.log" 2>&1 &
serve_pid=$!
pids+=("$serve_pid")
sleep 1
kill -0 "$serve_pid" 2>/dev/null || { echo "serve did not start:"; cat "$work/serve.log"; exit 1; }
ramp 5065 "uac->stirscreen redirect"
echo "highest rate held for ${secs}s by the redirect server: $best calls/s"
passed=$(grep -c '"verstat":"TN-Validation-Passed"' "$work/decisions.jsonl" || true)
echo "decision records: $(wc -l <"$work/decisions.jsonl"), of which TN-Validation-Passed: $passed"
kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true
serve_pid=""
if [ -z "${SKIP_CEILING:-}" ]; then
  out=$(sipp -sf tests/sipp/uas-302.xml -i 127.0.0.1 -p 5066 -buff_size 4194304 -bg 2>&1 || true)
  uas_pid=$(printf '%s' "$out" | sed -n 's/.*PID=\[\([0-9]*\)\].*/\1/p')
  sleep 0.3
  ramp 5066 "uac->sipp 302 (ceiling)"
  echo "harness ceiling: $best calls/s"
fi
