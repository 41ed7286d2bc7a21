#!/usr/bin/env bash
# Runs cargo-fuzz targets for a fixed time each, from the committed seeds
# (fuzz/seeds/<target>) plus, for certificates, the real STI certificates in
# ../shared/realworld/certs/core. New corpus entries go to fuzz/corpus/<target>
# (not committed); crashes to fuzz/artifacts/<target> and fail the run.
#
#   fuzz/run.sh [SECONDS] [TARGET...]      # default: 60 s, every target
#   RUNS=10000000 fuzz/run.sh 0 sip_message  # a fixed number of executions
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). Uses the nightly
# toolchain when installed, else stable with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(sip_message stream_framing identity_passport verify_prepare cert_chain policy_file)
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
max_len() {
  case "$1" in
    sip_message|verify_prepare|stream_framing) echo 70000 ;;  # MAX_SIP_MESSAGE + room
    cert_chain) echo 66000 ;;                                  # MAX_CERT_BODY + room
    identity_passport) echo 9000 ;;                            # MAX_IDENTITY_HEADER + room
    *) echo 16384 ;;
  esac
}
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  dirs=("corpus/$t" "seeds/$t")
  if [ "$t" = cert_chain ] && [ -d ../../shared/realworld/certs/core ]; then
    dirs+=("../../shared/realworld/certs/core")
  fi
  limit=(-max_total_time="$secs")
  if [ -n "${RUNS:-}" ]; then limit=(-runs="$RUNS"); fi
  log="artifacts/$t/last-run.log"
  if [ -n "${RUNS:-}" ]; then echo "== fuzz $t ($RUNS executions)"; else echo "== fuzz $t ($secs s)"; fi
  if ! "${fuzz[@]}" run "$t" "${dirs[@]}" -- "${limit[@]}" -max_len="$(max_len "$t")" \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz $t: FAILED (input in fuzz/artifacts/$t)"
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -1)
  summary+=("$t: ${runs:-?} executions in ${took:-$secs} s, no crash")
done
printf '%s\n' "${summary[@]}"
