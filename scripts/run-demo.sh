#!/usr/bin/env bash
# Starts the demo behind `make run`: the echo upstream on 127.0.0.1:9000 and Envoy with wsgate
# on envoy/envoy.yaml (or $CONFIG: `make run-native` gives the dynamic module's). Ctrl-C stops
# both.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY=${ENVOY:-.venv/bin/envoy}
CONFIG=${CONFIG:-envoy/envoy.yaml}
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# A token for the demo's /private path, signed now with the demo key in $CONFIG; the demo page
# (served by the echo upstream) logs in with it.
TOKEN=$(scripts/demo-token.sh "$CONFIG")
FORGED=$(scripts/demo-token.sh "$CONFIG" forged)
WSGATE_DEMO_TOKEN=$TOKEN WSGATE_DEMO_GATE=127.0.0.1:8080 target/release/wsgate-echo 127.0.0.1:9000 &
pids+=($!)
# Envoy's own lines at warning and up; wsgate's (config loaded, each denial) at info and up.
"$ENVOY" -c "$CONFIG" --concurrency 2 -l warn --component-log-level wasm:info,dynamic_modules:info &
envoy_pid=$!
pids+=("$envoy_pid")

for _ in $(seq 100); do
  if curl -fs http://127.0.0.1:9901/ready >/dev/null 2>&1; then break; fi
  kill -0 "$envoy_pid" 2>/dev/null || { echo "Envoy did not start; see its log above." >&2; exit 1; }
  sleep 0.1
done

client=target/release/wsgate-client
handshake="-H 'Connection: keep-alive, Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=='"
cat <<TRY

wsgate demo is running: Envoy on 127.0.0.1:8443 (TLS), :8080 (plaintext), :8081 (internal),
admin :9901. Try, in another terminal:

  $client ws://127.0.0.1:8080/ws --origin https://app.example.com hello
      101 Switching Protocols
      echo: hello
  $client ws://127.0.0.1:8080/ws --origin https://evil.example hello
      403 Forbidden
      Forbidden: origin not allowed
  $client ws://127.0.0.1:8080/ws --origin https://app.example.com.evil.example hello
      403 Forbidden
      Forbidden: origin not allowed
  $client ws://127.0.0.1:8081/ws hello
      101 Switching Protocols        (the internal listener admits tools that send no Origin)
      echo: hello

In a browser, http://127.0.0.1:8080/ is the demo page served through Envoy (an origin wsgate
allows: same_origin), and http://127.0.0.1:9000/ the same page on another origin of the site,
which wsgate refuses. Each opens a socket, logs in by first message and tries the CSP.

/private wants a JWT. This one was signed just now with the demo key in $CONFIG (published
there: never use it elsewhere) and is valid for an hour:

  TOKEN=$TOKEN

  $client "ws://127.0.0.1:8080/private?access_token=\$TOKEN" --origin https://app.example.com hello
      101 Switching Protocols        (the token in the query; the upstream never sees it)
      echo: hello
  $client ws://127.0.0.1:8080/private --origin https://app.example.com --header "cookie: ws_token=\$TOKEN" hello
      101 Switching Protocols        (in a cookie)
      echo: hello
  $client ws://127.0.0.1:8080/private --origin https://app.example.com --first "{\"type\":\"auth\",\"token\":\"\$TOKEN\"}" hello
      101 Switching Protocols        (in the first message, which wsgate reads and keeps)
      echo: hello
  $client "ws://127.0.0.1:8080/private?access_token=$FORGED" --origin https://app.example.com hello
      401 Unauthorized               (the same claims signed with another key)
      Unauthorized

Over TLS (self-signed certificate, hence -k), where wss:// is required:

  curl -sk --http1.1 https://localhost:8443/ws -H 'Origin: https://app.example.com' \\
       $handshake --max-time 1 -o /dev/null -w '%{http_code}\\n'
      101
  curl -sk --http1.1 https://localhost:8443/ws -H 'Origin: https://evil.example' \\
       $handshake -w ' %{http_code}\\n'
      Forbidden: origin not allowed 403
  curl -skI https://localhost:8443/page
      HTTP/2 200 ... content-security-policy: base-uri 'none'; connect-src 'self' wss://chat.example.com; ...
      strict-transport-security, x-content-type-options, referrer-policy, cross-origin-opener-policy, ...

Ctrl-C stops the demo.
TRY
wait "$envoy_pid"
