#!/usr/bin/env bash
# Resident memory and wall time of loading a 1M-entry list: generates the
# list and a policy that uses it under target/, then runs `policy check`
# (which loads everything) and reports its peak RSS from /proc.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
dir=target/policy-mem
mkdir -p "$dir"
python3 - "$dir/big.txt" <<'PY'
import sys, random
random.seed(7)
with open(sys.argv[1], "w") as f:
    for _ in range(1_000_000):
        f.write("1%010d\n" % random.randrange(10**10))
PY
cat > "$dir/policy.toml" <<'TOML'
[lists.big]
file = "big.txt"
[[rule]]
id = "big"
[rule.when]
orig_in = "big"
[rule.then]
reject = 608
TOML
if [ -x /usr/bin/time ]; then
  /usr/bin/time -f "1M-entry list: policy check %e s wall, peak RSS %M KB" ./target/release/stirscreen policy check "$dir/policy.toml"
  exit 0
fi
start=$(date +%s.%N)
./target/release/stirscreen policy check "$dir/policy.toml" &
pid=$!
peak=0
while kill -0 "$pid" 2>/dev/null; do
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  [ -n "$rss" ] && [ "$rss" -gt "$peak" ] && peak=$rss
  sleep 0.01
done
wait "$pid"
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" -v p="$peak" 'BEGIN { printf "1M-entry list: policy check %.2f s wall, peak RSS %.1f MB\n", e - s, p / 1024 }'
