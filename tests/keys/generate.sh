#!/usr/bin/env bash
# Generates the test-only signing keys in this folder and jwks.json, their public JWKs.
# Made for wsgate's tests and nothing else; rerun to replace them (tests read them at run time).
set -euo pipefail
cd "$(dirname "$0")"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.pem 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa-other.pem 2>/dev/null
# RSA keys of other sizes (2050 bits: not a whole number of bytes) and exponents, for the
# differential test of RSA verification (src/token/jwk.rs); 8192 bits is the most max_rsa_bits allows.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2050 -out rsa-2050.pem 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -pkeyopt rsa_keygen_pubexp:3 -out rsa-3072-e3.pem 2>/dev/null
# The largest exponent a key may have (2^33 - 1: every bit set, 33 of them).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -pkeyopt rsa_keygen_pubexp:8589934591 -out rsa-2048-e33.pem 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out rsa-4096.pem 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:8192 -out rsa-8192.pem 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec256.pem 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out ec384.pem 2>/dev/null
openssl genpkey -algorithm ED25519 -out ed25519.pem 2>/dev/null
# EC private keys in PKCS#8, as jsonwebtoken's from_ec_pem reads them.
for key in ec256 ec384; do openssl pkcs8 -topk8 -nocrypt -in "$key.pem" -out "$key.p8" && mv "$key.p8" "$key.pem"; done
head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' > hmac.secret
python3 - <<'PY'
import base64, json, subprocess

def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

def der_public(path: str) -> bytes:
    return subprocess.run(["openssl", "pkey", "-in", path, "-pubout", "-outform", "DER"],
                          check=True, capture_output=True).stdout

def rsa(path: str, kid: str) -> dict:
    out = subprocess.run(["openssl", "rsa", "-in", path, "-noout", "-modulus"],
                         check=True, capture_output=True, text=True).stdout
    n = bytes.fromhex(out.strip().split("=", 1)[1])
    return {"kty": "RSA", "kid": kid, "n": b64u(n), "e": b64u((65537).to_bytes(3, "big"))}

def ec(path: str, kid: str, crv: str, size: int) -> dict:
    point = der_public(path)[-(2 * size + 1):]  # SPKI ends with the uncompressed point 04 || x || y
    assert point[0] == 4
    return {"kty": "EC", "kid": kid, "crv": crv, "x": b64u(point[1:1 + size]), "y": b64u(point[1 + size:])}

def ed(path: str, kid: str) -> dict:
    return {"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64u(der_public(path)[-32:])}

secret = open("hmac.secret").read().strip()
keys = [rsa("rsa.pem", "rsa-1"), rsa("rsa-other.pem", "rsa-2"), ec("ec256.pem", "ec-256", "P-256", 32),
        ec("ec384.pem", "ec-384", "P-384", 48), ed("ed25519.pem", "ed-1"),
        {"kty": "oct", "kid": "hmac-1", "k": secret}]
json.dump({"keys": keys}, open("jwks.json", "w"), indent=1)
PY
