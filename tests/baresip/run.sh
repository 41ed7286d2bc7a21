#!/usr/bin/env bash
# Interop with a real SIP user agent: two baresip instances (Debian's
# baresip-core) through `stirscreen serve` on its embedded default (UDP/TCP
# 127.0.0.1:5060, next hop 127.0.0.1:5080), as a new user would try it.
# baresip cannot sign, so every call is unsigned (verstat No-TN-Validation).
#   1. a call over UDP: answered, established on both sides, hung up (BYE);
#      the callee sees the caller as a telephone-number URI (user=phone)
#      with verstat, the caller sees no verstat of ours;
#   2. the same over TCP from the caller;
#   3. CANCEL: the callee rings, the caller hangs up first (487);
#   4. a call from a do-not-originate number: 608 at the caller, the callee
#      never rings.
# The caller is driven through baresip's ctrl_tcp module (netstring JSON
# commands); the results are read from both UAs' logs and the decision log.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v baresip >/dev/null || { echo "baresip is not installed (apt-get install -y baresip-core)"; exit 1; }
cargo build --release --quiet
bin=$PWD/target/release/stirscreen
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# ua NAME PORT ACCOUNT [CTRL_PORT]: a baresip config directory.
ua() {
  mkdir -p "$work/$1"
  cat >"$work/$1/config" <<CONF
poll_method		epoll
sip_listen		127.0.0.1:$2
call_local_timeout	120
audio_player		aubridge,$1
audio_source		aubridge,$1-src
audio_alert		aubridge,$1
module_path		/usr/lib/baresip/modules
module			g711.so
module			aubridge.so
module_tmp		account.so
module_app		menu.so
CONF
  if [ -n "${4:-}" ]; then
    printf 'module_app\t\tctrl_tcp.so\nctrl_tcp_listen\t\t127.0.0.1:%s\n' "$4" >>"$work/$1/config"
  fi
  printf '%s\n' "$3" >"$work/$1/accounts"
  : >"$work/$1/contacts"
}

# ctrl PORT COMMAND PARAMS: one command to a baresip's ctrl_tcp.
ctrl() {
  local json="{\"command\":\"$2\",\"params\":\"$3\",\"token\":\"t\"}"
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  printf '%d:%s,' "${#json}" "$json" >&3
  sleep 0.2
  exec 3>&-
}

# wait_for FILE PATTERN [TENTHS]: until the file has a line matching.
wait_for() {
  for _ in $(seq "${3:-50}"); do
    grep -q -- "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $(basename "$1")"; tail -20 "$1"; return 1
}

fail() { echo "FAIL: $*"; tail -5 "$work"/*.log 2>/dev/null; exit 1; }

rm -f stirscreen.db stirscreen.db-wal stirscreen.db-shm decisions.jsonl*
"$bin" serve >"$work/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/5060) 2>/dev/null && break; sleep 0.1; done

# Callee on the default next hop (5080; baresip also takes 5081 for TLS).
ua callee 5080 '<sip:+12125551213@127.0.0.1:5080>;regint=0;answermode=auto'
baresip -s -f "$work/callee" >"$work/callee.log" 2>&1 </dev/null &
callee_pid=$!
pids+=("$callee_pid")
wait_for "$work/callee.log" "baresip is ready"

start_caller() { # NAME ACCOUNT
  ua "$1" 5094 "$2" 4444
  baresip -f "$work/$1" >"$work/$1.log" 2>&1 </dev/null &
  caller_pid=$!
  pids+=("$caller_pid")
  wait_for "$work/$1.log" "baresip is ready"
}
stop_caller() { kill "$caller_pid" 2>/dev/null || true; wait "$caller_pid" 2>/dev/null || true; }

echo "== 1. a call over UDP: answered, established, hung up"
start_caller udp '<sip:+12155551212@127.0.0.1:5094>;regint=0;outbound="sip:127.0.0.1:5060"'
ctrl 4444 dial "sip:+12125551213@127.0.0.1"
wait_for "$work/udp.log" "Call established"
wait_for "$work/callee.log" "Call established: sip:+12155551212;verstat=No-TN-Validation@127.0.0.1:5094;user=phone"
ctrl 4444 hangup ""
# baresip reports a BYE from the peer as "session closed: Connection reset
# by peer"; its SIP trace (-s) shows the BYE itself.
wait_for "$work/callee.log" "^BYE sip:"
wait_for "$work/callee.log" "session closed"
grep "Call established" "$work/udp.log" | grep -q verstat && fail "the caller saw our verstat"
stop_caller
echo "ok: established on both sides, the callee saw the caller as user=phone with verstat, BYE ended it"

echo "== 2. the same over TCP from the caller"
start_caller tcp '<sip:+12155551212@127.0.0.1:5094;transport=tcp>;regint=0;outbound="sip:127.0.0.1:5060;transport=tcp"'
calls_before=$(grep -c "Call established" "$work/callee.log")
ctrl 4444 dial "sip:+12125551213@127.0.0.1"
wait_for "$work/tcp.log" "Call established"
ctrl 4444 hangup ""
for _ in $(seq 50); do [ "$(grep -c "session closed" "$work/callee.log")" -ge 2 ] && break; sleep 0.1; done
[ "$(grep -c "^BYE sip:" "$work/callee.log")" -ge 2 ] || fail "the TCP call's BYE did not reach the callee"
[ "$(grep -c "Call established" "$work/callee.log")" -gt "$calls_before" ] || fail "the callee did not establish the TCP call"
stop_caller
echo "ok: a TCP caller reached the UDP callee and hung up"

echo "== 3. CANCEL while the callee rings"
kill "$callee_pid"; wait "$callee_pid" 2>/dev/null || true
ua callee 5080 '<sip:+12125551213@127.0.0.1:5080>;regint=0;answermode=manual'
baresip -s -f "$work/callee" >"$work/callee-ring.log" 2>&1 </dev/null &
callee_pid=$!
pids+=("$callee_pid")
wait_for "$work/callee-ring.log" "baresip is ready"
start_caller cancel '<sip:+12155551212@127.0.0.1:5094>;regint=0;outbound="sip:127.0.0.1:5060"'
ctrl 4444 dial "sip:+12125551213@127.0.0.1"
wait_for "$work/cancel.log" "180 Ringing"
ctrl 4444 hangup ""
wait_for "$work/callee-ring.log" "^CANCEL sip:"
wait_for "$work/callee-ring.log" "SIP/2.0 487"
grep -q "Call established" "$work/callee-ring.log" && fail "a cancelled call was established"
stop_caller
echo "ok: the ringing callee saw the call end before it answered"

echo "== 4. a call from a do-not-originate number"
start_caller dno '<sip:+19005550100@127.0.0.1:5094>;regint=0;outbound="sip:127.0.0.1:5060"'
ctrl 4444 dial "sip:+12125551213@127.0.0.1"
wait_for "$work/dno.log" "608"
stop_caller
[ "$(grep -c "^INVITE sip:" "$work/callee-ring.log")" -le 1 ] || fail "the blocked call reached the callee"
echo "ok: 608 at the caller; the callee never rang"

for _ in $(seq 30); do [ "$(wc -l <decisions.jsonl 2>/dev/null || echo 0)" -ge 4 ] && break; sleep 0.1; done
grep -q '"action":"forward".*' decisions.jsonl || fail "no forward in the decision log"
grep -q '"rule":"do-not-originate".*"code":608\|"code":608' decisions.jsonl || fail "no 608 in the decision log"
echo "baresip: 4 passed, 0 failed"
