#!/usr/bin/env bash
# Prints a JWT for the demo's /private path, signed now with the demo key that CONFIG's
# /private policy lists (kid "demo", published in the file: never use it elsewhere) and valid
# for an hour. With "forged", the same claims signed with another key: wsgate refuses it.
set -euo pipefail
CONFIG=${1:-envoy/envoy.yaml}
KIND=${2:-valid}

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

key=$(grep -o '"kid": "demo", "k": "[^"]*"' "$CONFIG" | head -n 1 | sed 's/.*"k": "//; s/"$//')
[ -n "$key" ] || { echo "no demo key (kid \"demo\") in $CONFIG" >&2; exit 1; }
padded=$(printf '%s' "$key" | tr -- '-_' '+/')
while [ $(( ${#padded} % 4 )) -ne 0 ]; do padded="$padded="; done
hex=$(printf '%s' "$padded" | openssl base64 -d -A | od -An -v -tx1 | tr -d ' \n')
[ "$KIND" = forged ] && hex=$(printf '%s' "$hex" | sed 's/^../00/')

header='{"alg":"HS256","typ":"JWT","kid":"demo"}'
claims="{\"iss\":\"https://demo.wsgate.invalid\",\"aud\":\"demo\",\"sub\":\"demo-user\",\"exp\":$(( $(date +%s) + 3600 ))}"
signing_input="$(printf '%s' "$header" | b64url).$(printf '%s' "$claims" | b64url)"
signature=$(printf '%s' "$signing_input" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$hex" -binary | b64url)
printf '%s.%s\n' "$signing_input" "$signature"
