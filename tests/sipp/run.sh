#!/usr/bin/env bash
# SIPp interop: `stirscreen serve` on its embedded default configuration
# (127.0.0.1:5060 UDP+TCP, next hop 127.0.0.1:5080, the demo credential
# pinned for https://sti.stirscreen.example/sp-a.pem), a SIPp UAS on 5080 and
# a SIPp UAC sending freshly signed INVITEs.
#   1. forwarded calls complete, and the UAS sees verstat=TN-Validation-Passed;
#   2. calls from a do-not-originate number get 608 with a jCard Call-Info;
#   3. /metrics (127.0.0.1:9090) and decisions.jsonl account for every call.
#   4. SIP over TLS: a second `serve` with a `tls:` listener and a `tls:` next
#      hop. Debian's SIPp is built without TLS (no `-t l1`), so SIPp speaks
#      TCP to stunnel (OpenSSL), which carries it over TLS: SIPp UAC ->
#      stunnel client -> stirscreen tls:5061 -> TLS -> stunnel server ->
#      SIPp UAS (TCP). Both TLS legs are real handshakes with the lab TLS
#      PKI against an independent TLS implementation.
#   5. The redirect server ([redirect] listen, UDP 5065, same process as 4):
#      SIPp as an SBC asks with the INVITE, ACKs the 302, sends the new
#      INVITE to the UAS with the Contact's verstat on From (uas.xml checks).
#   6. Each [[peers]] annotation profile (verstat, verstat-attest,
#      attestation-info, call-info; the calls carry rcd): a `serve` per
#      profile on UDP 5066 whose next hop
#      (a SIPp UAS on 5082) is that peer; the UAS checks the exact form
#      (uas-annotation.xml, filled in per profile).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v sipp >/dev/null || { echo "sipp is not installed (apt-get install -y sip-tester)"; exit 1; }
cargo build --release --quiet
bin=target/release/stirscreen
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
calls=${CALLS:-20}

# No arguments: the embedded default configuration (state in ./stirscreen.db).
rm -f stirscreen.db stirscreen.db-wal stirscreen.db-shm decisions.jsonl*
"$bin" serve >"$work/serve.log" 2>&1 &
pids+=($!)
sleep 1

x5u=https://sti.stirscreen.example/sp-a.pem
"$bin" sign --key certs/demo/sp-a.key --x5u "$x5u" --orig 12155551212 --dest 12125551213 --attest A --sipp-csv "$calls" >"$work/ok.csv"
"$bin" sign --key certs/demo/sp-a.key --x5u "$x5u" --orig 19005550100 --dest 12125551213 --attest A --sipp-csv "$calls" >"$work/dno.csv"

out=$(sipp -sf tests/sipp/uas.xml -i 127.0.0.1 -p 5080 -m "$calls" -bg -trace_err -error_file "$work/uas-errors.log" -trace_screen -screen_file "$work/uas-screen.log" 2>&1 || true)
uas_pid=$(printf '%s' "$out" | sed -n 's/.*PID=\[\([0-9]*\)\].*/\1/p')
[ -n "$uas_pid" ] || { echo "SIPp UAS did not start: $out"; exit 1; }
pids+=("$uas_pid")
sleep 0.5
echo "== $calls signed calls through the proxy"
sipp 127.0.0.1:5060 -sf tests/sipp/uac.xml -inf "$work/ok.csv" -i 127.0.0.1 -p 5070 -m "$calls" -r 10 -timeout 30s -timeout_error \
  -trace_err -error_file "$work/uac-errors.log" -trace_stat -stf "$work/uac.csv" >/dev/null || {
  echo "SIPp UAC failed"; cat "$work"/*errors.log 2>/dev/null | tail -40; cat "$work/serve.log"; exit 1; }
echo "ok: $calls calls completed (200, ACK, BYE) with verstat at the UAS"
echo "== $calls calls from a do-not-originate number"
sipp 127.0.0.1:5060 -sf tests/sipp/uac-blocked.xml -inf "$work/dno.csv" -i 127.0.0.1 -p 5071 -m "$calls" -r 10 -timeout 30s -timeout_error \
  -trace_err -error_file "$work/uac2-errors.log" >/dev/null || {
  echo "SIPp blocked UAC failed"; cat "$work"/*errors.log 2>/dev/null | tail -40; exit 1; }
echo "ok: $calls calls answered 608 with a jwscard Call-Info"
# The UAS must have finished all its calls (INVITE with verstat, ACK, BYE).
for _ in $(seq 50); do kill -0 "$uas_pid" 2>/dev/null || break; sleep 0.1; done
ok_calls=$(awk -F'|' '/Successful call/ {gsub(/ /, "", $3); print $3; exit}' "$work/uas-screen.log" 2>/dev/null || true)
failed=$(awk -F'|' '/Failed call/ {gsub(/ /, "", $3); print $3; exit}' "$work/uas-screen.log" 2>/dev/null || true)
if [ "${ok_calls:-}" != "$calls" ] || [ "${failed:-0}" != "0" ]; then
  echo "UAS: successful ${ok_calls:-?}, failed ${failed:-?} (expected $calls, 0)"
  grep -v "Failed to delete FD from epoll" "$work/uas-errors.log" 2>/dev/null | tail -20
  exit 1
fi
echo "ok: the UAS completed $ok_calls calls, each INVITE carrying verstat=TN-Validation-Passed"
echo "== /metrics and the decision log of the embedded default"
get() { if command -v curl >/dev/null; then curl -sf "$1"; else python3 -c 'import sys,urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' "$1"; fi; }
want=$((2 * calls))
for _ in $(seq 50); do
  records=$(wc -l <decisions.jsonl 2>/dev/null || echo 0)
  [ "$records" -ge "$want" ] && break; sleep 0.1
done
[ "$records" = "$want" ] || { echo "decision log: $records records, expected $want"; exit 1; }
passed=$(get http://127.0.0.1:9090/metrics | awk '/^stirscreen_calls_screened_total\{verstat="TN-Validation-Passed"/ {s += $2} END {print s + 0}')
[ "$passed" = "$want" ] || { echo "/metrics: $passed verified calls, expected $want"; exit 1; }
[ "$(get http://127.0.0.1:9090/readyz)" = "ready" ] || { echo "/readyz is not ready"; exit 1; }
echo "ok: /metrics counted $passed verified calls; decisions.jsonl has $records records"
echo "== $calls signed calls over TLS (SIPp via stunnel, both legs TLS)"
command -v stunnel >/dev/null || { echo "stunnel is not installed (apt-get install -y stunnel4)"; exit 1; }
root=$(pwd)
cat >"$work/tls.toml" <<EOF
[verify]
trust_anchors = ["$root/certs/demo/sti-root.pem"]
[fetch.pinned]
"https://sti.stirscreen.example/sp-a.pem" = "$root/certs/demo/sp-a.pem"
[proxy]
listen = ["tls:127.0.0.1:5061"]
next_hop = "tls:127.0.0.1:5081"
[redirect]
listen = ["udp:127.0.0.1:5065"]
[tls]
certificate = "$root/certs/demo/tls-server.pem"
private_key = "$root/certs/demo/tls-server.key"
server_ca = ["$root/certs/demo/tls-ca.pem"]
[policy]
file = "$root/policies/default.toml"
[store]
path = "$work/tls.db"
[admin]
listen = "127.0.0.1:9091"
[log]
decisions = ""
[operator]
jcard_key = "$root/certs/demo/operator.key"
EOF
cat >"$work/stunnel.conf" <<EOF
foreground = yes
pid =
output = $work/stunnel.log
[sip-out]
client = yes
accept = 127.0.0.1:5062
connect = 127.0.0.1:5061
CAfile = $root/certs/demo/tls-ca.pem
verifyChain = yes
checkIP = 127.0.0.1
[sip-in]
accept = 127.0.0.1:5081
connect = 127.0.0.1:5080
cert = $root/certs/demo/tls-server.pem
key = $root/certs/demo/tls-server.key
EOF
"$bin" serve --config "$work/tls.toml" >"$work/serve-tls.log" 2>&1 &
pids+=($!)
stunnel "$work/stunnel.conf" >/dev/null 2>&1 &
pids+=($!)
sleep 1
"$bin" sign --key certs/demo/sp-a.key --x5u "$x5u" --orig 12155551212 --dest 12125551213 --attest A --sipp-csv "$calls" >"$work/tls.csv"
out=$(sipp -sf tests/sipp/uas.xml -t t1 -i 127.0.0.1 -p 5080 -m "$calls" -bg -trace_err -error_file "$work/uas-tls-errors.log" -trace_screen -screen_file "$work/uas-tls-screen.log" 2>&1 || true)
uas_pid=$(printf '%s' "$out" | sed -n 's/.*PID=\[\([0-9]*\)\].*/\1/p')
[ -n "$uas_pid" ] || { echo "SIPp TCP UAS did not start: $out"; exit 1; }
pids+=("$uas_pid")
sleep 0.5
sipp 127.0.0.1:5062 -sf tests/sipp/uac.xml -t t1 -inf "$work/tls.csv" -i 127.0.0.1 -p 5072 -m "$calls" -r 10 -timeout 30s -timeout_error \
  -trace_err -error_file "$work/uac-tls-errors.log" >/dev/null || {
  echo "SIPp UAC over TLS failed"; cat "$work"/*tls-errors.log 2>/dev/null | tail -40; cat "$work/serve-tls.log" "$work/stunnel.log"; exit 1; }
for _ in $(seq 50); do kill -0 "$uas_pid" 2>/dev/null || break; sleep 0.1; done
ok_calls=$(awk -F'|' '/Successful call/ {gsub(/ /, "", $3); print $3; exit}' "$work/uas-tls-screen.log" 2>/dev/null || true)
if [ "${ok_calls:-}" != "$calls" ]; then
  echo "UAS behind TLS: successful ${ok_calls:-?} calls, expected $calls"
  grep -v "Failed to delete FD from epoll" "$work/uas-tls-errors.log" 2>/dev/null | tail -20
  exit 1
fi
tls_in=$(get http://127.0.0.1:9091/metrics | awk '/^stirscreen_calls_screened_total\{verstat="TN-Validation-Passed"/ {s += $2} END {print s + 0}')
[ "$tls_in" = "$calls" ] || { echo "/metrics of the TLS proxy: $tls_in verified calls, expected $calls"; exit 1; }
echo "ok: $calls calls over TLS completed, each INVITE carrying verstat=TN-Validation-Passed at the UAS"

echo "== $calls calls through the redirect server (302, then the new INVITE to the callee)"
"$bin" sign --key certs/demo/sp-a.key --x5u "$x5u" --orig 12155551212 --dest 12125551214 --attest A --sipp-csv "$calls" >"$work/redirect.csv"
out=$(sipp -sf tests/sipp/uas.xml -i 127.0.0.1 -p 5080 -m "$calls" -bg -trace_err -error_file "$work/uas-redirect-errors.log" -trace_screen -screen_file "$work/uas-redirect-screen.log" 2>&1 || true)
uas_pid=$(printf '%s' "$out" | sed -n 's/.*PID=\[\([0-9]*\)\].*/\1/p')
[ -n "$uas_pid" ] || { echo "SIPp UAS did not start: $out"; exit 1; }
pids+=("$uas_pid")
sleep 0.5
sipp 127.0.0.1:5065 -sf tests/sipp/uac-redirect.xml -inf "$work/redirect.csv" -i 127.0.0.1 -p 5073 -m "$calls" -r 10 -timeout 30s -timeout_error \
  -trace_err -error_file "$work/uac-redirect-errors.log" >/dev/null || {
  echo "SIPp redirect UAC failed"; cat "$work"/*redirect-errors.log 2>/dev/null | tail -40; cat "$work/serve-tls.log"; exit 1; }
for _ in $(seq 50); do kill -0 "$uas_pid" 2>/dev/null || break; sleep 0.1; done
ok_calls=$(awk -F'|' '/Successful call/ {gsub(/ /, "", $3); print $3; exit}' "$work/uas-redirect-screen.log" 2>/dev/null || true)
if [ "${ok_calls:-}" != "$calls" ]; then
  echo "UAS after the redirect: successful ${ok_calls:-?} calls, expected $calls"
  grep -v "Failed to delete FD from epoll" "$work/uas-redirect-errors.log" 2>/dev/null | tail -20
  exit 1
fi
redirected=$(get http://127.0.0.1:9091/metrics | awk '/^stirscreen_front_end_calls_total\{front_end="redirect",action="forward",code="302"/ {s += $2} END {print s + 0}')
[ "$redirected" = "$calls" ] || { echo "/metrics: $redirected redirected calls, expected $calls"; exit 1; }
echo "ok: $calls calls answered 302 with verstat in the Contact; the UAS got each new INVITE with verstat in From"

echo "== [[peers]] annotation profiles, $calls calls each, checked at the UAS"
# Every call carries verified rich call data (rcd nam + icn): only the
# call-info profile presents it (the default policy's forward rule does not).
"$bin" sign --key certs/demo/sp-a.key --x5u "$x5u" --orig 12155551212 --dest 12125551215 --attest A \
  --rcd-name "Acme Pharmacy" --rcd-icon https://acme.example/logo.png --sipp-csv "$calls" >"$work/ann.csv"
# (`.` stands for the angle brackets, which the XML attribute cannot hold.)
ci_re='^ *.https://acme\.example/logo\.png.;purpose=icon;verified *$'
# The call-info profile's INVITEs (display name, Call-Info) exceed 1300
# bytes, so they leave over TCP (RFC 3261 §18.1.1): that UAS listens on TCP.
for spec in "verstat|;verstat=TN-Validation-Passed@|check_it_inverse|check_it_inverse|udp" \
            "verstat-attest|;verstat=TN-Validation-Passed-A@|check_it_inverse|check_it_inverse|udp" \
            "attestation-info|;verstat=TN-Validation-Passed@|check_it|check_it_inverse|udp" \
            "call-info|;verstat=TN-Validation-Passed@|check_it_inverse|check_it|tcp"; do
  IFS='|' read -r profile from_re ai_check ci_check hop <<<"$spec"
  if [ "$hop" = tcp ]; then uas_t=t1; else uas_t=u1; fi
  sed -e "s/@FROM@/$from_re/" -e "s/@AI_CHECK@/$ai_check/" -e "s|@CI_RE@|$ci_re|" -e "s/@CI_CHECK@/$ci_check/" \
    tests/sipp/uas-annotation.xml >"$work/uas-$profile.xml"
  cat >"$work/ann-$profile.toml" <<EOF
[verify]
trust_anchors = ["$root/certs/demo/sti-root.pem"]
[fetch.pinned]
"https://sti.stirscreen.example/sp-a.pem" = "$root/certs/demo/sp-a.pem"
[proxy]
listen = ["udp:127.0.0.1:5066"]
next_hop = "$hop:127.0.0.1:5082"
[policy]
file = "$root/policies/default.toml"
[store]
path = "$work/ann-$profile.db"
[admin]
listen = ""
[log]
decisions = ""
[operator]
jcard_key = "$root/certs/demo/operator.key"
[[peers]]
name = "pbx"
addresses = ["127.0.0.1/32"]
annotation = "$profile"
EOF
  "$bin" serve --config "$work/ann-$profile.toml" >"$work/serve-$profile.log" 2>&1 &
  serve_pid=$!
  pids+=("$serve_pid")
  out=$(sipp -sf "$work/uas-$profile.xml" -t "$uas_t" -i 127.0.0.1 -p 5082 -m "$calls" -bg -trace_err -error_file "$work/uas-$profile-errors.log" -trace_screen -screen_file "$work/uas-$profile-screen.log" 2>&1 || true)
  uas_pid=$(printf '%s' "$out" | sed -n 's/.*PID=\[\([0-9]*\)\].*/\1/p')
  [ -n "$uas_pid" ] || { echo "SIPp UAS ($profile) did not start: $out"; exit 1; }
  pids+=("$uas_pid")
  sleep 0.7
  sipp 127.0.0.1:5066 -sf tests/sipp/uac.xml -inf "$work/ann.csv" -i 127.0.0.1 -p 5074 -m "$calls" -r 10 -timeout 30s -timeout_error \
    -trace_err -error_file "$work/uac-$profile-errors.log" >/dev/null || {
    echo "SIPp UAC ($profile) failed"; grep -hv "Failed to delete FD" "$work"/*"$profile"-errors.log 2>/dev/null | tail -40; cat "$work/serve-$profile.log"; exit 1; }
  for _ in $(seq 50); do kill -0 "$uas_pid" 2>/dev/null || break; sleep 0.1; done
  ok_calls=$(awk -F'|' '/Successful call/ {gsub(/ /, "", $3); print $3; exit}' "$work/uas-$profile-screen.log" 2>/dev/null || true)
  failed=$(awk -F'|' '/Failed call/ {gsub(/ /, "", $3); print $3; exit}' "$work/uas-$profile-screen.log" 2>/dev/null || true)
  if [ "${ok_calls:-}" != "$calls" ] || [ "${failed:-0}" != "0" ]; then
    echo "UAS ($profile): successful ${ok_calls:-?}, failed ${failed:-?} (expected $calls, 0)"
    grep -v "Failed to delete FD from epoll" "$work/uas-$profile-errors.log" 2>/dev/null | tail -20
    exit 1
  fi
  kill "$serve_pid" 2>/dev/null || true
  wait "$serve_pid" 2>/dev/null || true
  if [ "$ai_check" = check_it ]; then ai_word="Attestation-Info: A"; else ai_word="no Attestation-Info"; fi
  if [ "$ci_check" = check_it ]; then ci_word="the verified Call-Info"; else ci_word="no Call-Info"; fi
  echo "ok: $profile: $calls INVITEs with From $from_re, $ai_word, $ci_word"
done
echo "sipp: 6 passed, 0 failed"
