#!/usr/bin/env bash
# Verification throughput against the OpenSSL reference, measured in the
# same run. This VM's speed drifts by several percent over tens of seconds,
# so the script runs ROUNDS rounds; each round measures
#   openssl speed -seconds 3 ecdsap256        (verify/s, 1 core)
# immediately followed by
#   cargo bench --bench verify -- full_path_cached$   (criterion, 1 core)
# and prints the per-round ratio and the median ratio.
#   usage: benches/compare_openssl.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
cargo bench --bench verify --no-run >/dev/null 2>&1

criterion_rate() { # bench id -> elements/s (mean of criterion's estimate)
  cargo bench --bench verify -- "$1\$" --noplot --measurement-time 5 --warm-up-time 2 2>/dev/null |
    awk '/thrpt:/ { v = $(NF-3); u = $(NF-2);
                    if (u ~ /^Kelem/) v *= 1000; else if (u ~ /^Melem/) v *= 1000000;
                    printf "%.0f\n", v; exit }'
}

ratios=()
for r in $(seq 1 "$rounds"); do
  ossl=$(openssl speed -seconds 3 ecdsap256 2>/dev/null | awk '/256 bits ecdsa \(nistp256\)/ {print $NF}')
  full=$(criterion_rate "verify/full_path_cached")
  ratio=$(awk -v a="$full" -v b="$ossl" 'BEGIN { printf "%.3f", a / b }')
  ratios+=("$ratio")
  echo "round $r: openssl verify/s $ossl | verify/full_path_cached $full/s | ratio ${ratio}x"
done
two=$(criterion_rate "verify/full_path_cached_2threads")
echo "verify/full_path_cached_2threads: $two/s (both cores)"
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median ratio full_path_cached / openssl = ${median}x (target >= 1.10x)"
