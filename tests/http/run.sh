#!/usr/bin/env bash
# The HTTP API's OpenAPI document (src/api/openapi.json) checked against the
# running server by schemathesis (PyPI): `stirscreen serve` with `[api]`
# on 127.0.0.1 (signing configured), schemathesis generating requests from
# the document served at /openapi.json and checking every response (status
# codes, content types, headers, bodies against the schemas; no 5xx).
# `positive_data_acceptance` is left out: requests the schema cannot tell are
# stale (time/iat far from now) are rightly refused with 400 / an ATIS
# reason. Ends by itself; stops only the server it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v schemathesis >/dev/null || { echo "install schemathesis: pip install schemathesis"; exit 1; }
cargo build --release --quiet
bin=$PWD/target/release/stirscreen
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port=${PORT:-18444}
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
signing_key = "$root/certs/demo/sp-a.key"
signing_x5u = "https://sti.stirscreen.example/sp-a.pem"
[policy]
file = "$root/policies/default.toml"
[store]
path = "$work/api.db"
[admin]
listen = ""
[log]
decisions = ""
[operator]
jcard_key = "$root/certs/demo/operator.key"
TOML
"$bin" serve --config "$work/api.toml" >"$work/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $port)))" 2>/dev/null && break
  sleep 0.1
done
echo "== schemathesis against http://127.0.0.1:$port/openapi.json"
(cd "$work" && schemathesis run "http://127.0.0.1:$port/openapi.json" --checks all \
  --exclude-checks positive_data_acceptance --max-examples "${EXAMPLES:-100}" --seed 1) || {
  echo "schemathesis found a mismatch"; tail -20 "$work/serve.log"; exit 1; }
echo "ok: the running API conforms to its OpenAPI document"
