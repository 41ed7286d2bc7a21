#!/usr/bin/env bash
# Runs the verification benches and the OpenSSL ECDSA P-256 reference in the
# same run, and prints verifications/s per core and the ratio.
#   usage: benches/compare_openssl.sh [seconds-for-openssl]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-3}"

echo "== openssl speed -seconds $secs ecdsap256 (reference)"
ossl=$(openssl speed -seconds "$secs" ecdsap256 2>/dev/null | awk '/256 bits ecdsa \(nistp256\)/ {print $NF}')
echo "openssl verify/s: $ossl"

echo "== cargo bench --bench verify"
cargo bench --bench verify -- --noplot 2>&1 | tee target/verify-bench.txt | grep -E "^verify/|time:|thrpt:"

# criterion prints "thrpt: [low mid high]" in elem/s or Kelem/s.
rate() {
  awk -v id="verify/$1" '
    $1 == id || ($1 == id && found == 0) { found = 1 }
    found && /thrpt:/ {
      v = $(NF-3); u = $(NF-2);
      if (u ~ /^Kelem/) v *= 1000; else if (u ~ /^Melem/) v *= 1000000;
      printf "%.0f\n", v; exit
    }' target/verify-bench.txt
}
full=$(rate full_path_cached)
two=$(rate full_path_cached_2threads)
echo
echo "verify/full_path_cached:          $full verifications/s (1 core)"
echo "verify/full_path_cached_2threads: $two verifications/s (2 threads)"
echo "openssl speed ecdsap256 verify:   $ossl verify/s (1 core)"
awk -v a="$full" -v b="$ossl" 'BEGIN { printf "ratio full_path_cached / openssl = %.2fx (target >= 1.10x)\n", a / b }'
