//! JWS algorithms (RFC 7518) and verification keys from a JWK Set (RFC 7517), each key bound at
//! load to the algorithms its type allows. The binding is what stops algorithm confusion: an RSA
//! public key can never serve as an HMAC secret, whatever a token's header says.

use base64ct::{Base64UrlUnpadded, Encoding};
use crypto_bigint::modular::BoxedMontyForm;
use hmac::{Hmac, KeyInit, Mac};
use rsa::signature::Verifier;
use rsa::traits::SignatureScheme;
use rsa::{Pkcs1v15Sign, Pss};
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::error::ConfigError;

/// The JWS algorithms wsgate verifies. `none` is not one of them, and never will be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// Every algorithm, in the order they are listed to users.
pub const ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Algorithm {
    /// The algorithm named exactly `name` (`alg` values are case-sensitive, RFC 7515 4.1.1).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        ALGORITHMS.into_iter().find(|alg| alg.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }
}

const HMAC_FITS: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA_FITS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// The public part of a key (or an HMAC secret), parsed once.
#[derive(Clone, Debug)]
enum Material {
    Hmac(Vec<u8>),
    Rsa(rsa::PublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// Which implementation verifies signatures: RustCrypto's crates (the wasm build, and the
/// reference natively) or `ring` (the dynamic module, feature `ring`). Both take the keys parsed
/// and checked once, by RustCrypto, at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    RustCrypto,
    #[cfg(feature = "ring")]
    Ring,
}

impl Backend {
    /// The backend of this build: `ring` where it is compiled in.
    pub const BUILT: Backend = {
        #[cfg(feature = "ring")]
        let built = Backend::Ring;
        #[cfg(not(feature = "ring"))]
        let built = Backend::RustCrypto;
        built
    };
}

/// A verification key and the algorithms it may verify.
#[derive(Clone, Debug)]
pub struct Jwk {
    pub kid: Option<String>,
    material: Material,
    /// The public key in the form `ring` takes it: RSA's modulus and exponent, an uncompressed
    /// EC point, an Ed25519 key, an HMAC secret.
    #[cfg(feature = "ring")]
    ring: (Vec<u8>, Vec<u8>),
    algorithms: Vec<Algorithm>,
}

/// The JWK members wsgate reads; others are ignored (RFC 7517 section 4).
#[derive(Deserialize)]
#[serde(expecting = "a JWK object")]
struct Members {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    k: Option<String>,
    k_env: Option<String>,
    d: Option<String>,
}

/// The smallest RSA modulus accepted, in bits (NIST SP 800-131A).
const RSA_MIN_BITS: usize = 2048;
/// The largest `max_rsa_bits` may allow: bigger keys only cost time on every request.
pub const RSA_MAX_BITS: usize = 8192;
/// The smallest `max_rsa_bits` may be.
pub const RSA_MIN_MAX_BITS: usize = RSA_MIN_BITS;
/// How many keys may fit a token that names none (`kid`): each is tried in turn, so an
/// anonymous client could make every handshake cost that many verifications.
pub const MAX_KEYS_WITHOUT_KID: usize = 4;
/// The shortest HMAC secret accepted: the output size of SHA-256 (RFC 7518 section 3.2).
const HMAC_MIN_BYTES: usize = 32;

impl Jwk {
    /// Parses one JWK of the configured set. `allowed` are the configured algorithms, RSA moduli
    /// are at most `max_rsa_bits`; `env` reads the VM's environment, for `k_env`.
    pub fn compile(
        value: &serde_json::Value,
        allowed: &[Algorithm],
        max_rsa_bits: usize,
        field: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Jwk, ConfigError> {
        let err = |member: &str, problem: String| {
            let at = if member.is_empty() { field.to_string() } else { format!("{field}.{member}") };
            ConfigError::new(at, problem)
        };
        let members: Members = crate::config_json::from_value(value.clone()).map_err(|e| {
            let path = e.path();
            let member = if path == "." { String::new() } else { path };
            // serde's message repeats the value ("invalid type: integer `…`"): never a secret's.
            let problem = match member.as_str() {
                "k" | "d" => {
                    "is not a usable JWK: not a string (its value, key material, is not shown)".into()
                }
                _ => format!("is not a usable JWK: {}", e.message()),
            };
            err(&member, problem)
        })?;
        if members.d.is_some() {
            return Err(err("d", "is private key material; give only the public key".to_string()));
        }
        if members.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err(err("use", "is not \"sig\"; this key is not for signatures".to_string()));
        }
        if members.key_ops.as_ref().is_some_and(|ops| !ops.iter().any(|op| op == "verify")) {
            return Err(err("key_ops", "does not include \"verify\"".to_string()));
        }
        let bytes = |member: &str, value: &Option<String>| -> Result<Vec<u8>, ConfigError> {
            let text = value.as_deref().ok_or_else(|| err(member, "is missing".to_string()))?;
            Base64UrlUnpadded::decode_vec(text)
                .map_err(|_| err(member, "is not base64url without padding".to_string()))
        };
        // An EC key's x and y, `size` bytes each, as an uncompressed SEC1 point.
        let ec_point = |size: usize| -> Result<Vec<u8>, ConfigError> {
            let (x, y) = (bytes("x", &members.x)?, bytes("y", &members.y)?);
            sec1_point(&x, &y, size).ok_or_else(|| err("", format!("x and y are not {size} bytes each")))
        };
        let off_curve =
            || err("", format!("x and y are not a point on {}", members.crv.as_deref().unwrap_or("?")));
        #[cfg(feature = "ring")]
        let mut ring: (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
        let material = match (members.kty.as_str(), members.crv.as_deref()) {
            ("RSA", _) => {
                let minimal = |b: &[u8]| {
                    b.iter().position(|&x| x != 0).and_then(|at| b.get(at..)).unwrap_or_default().to_vec()
                };
                // Leading zero bytes (some key sets send one) are no part of the modulus: sized by
                // them, every verification would compute at their width, up to the set's size.
                let n = minimal(&bytes("n", &members.n)?);
                let e = bytes("e", &members.e)?;
                #[cfg(feature = "ring")]
                {
                    ring = (n.clone(), minimal(&e));
                }
                let bits = u32::try_from(n.len() * 8).map_err(|_| err("n", "is too long".to_string()))?;
                let n = rsa::BoxedUint::from_be_slice(&n, bits)
                    .map_err(|_| err("n", "is not a modulus".to_string()))?;
                let e =
                    rsa::BoxedUint::from_be_slice(&e, 64).map_err(|_| err("e", "is too long".to_string()))?;
                let key =
                    rsa::PublicKey::new_with_size_limits(n, e, RSA_MIN_BITS..=max_rsa_bits).map_err(|e| {
                        err(
                            "n",
                            format!(
                                "is not an RSA public key of {RSA_MIN_BITS} to {max_rsa_bits} bits (max_rsa_bits): {e}"
                            ),
                        )
                    })?;
                Material::Rsa(key)
            }
            ("EC", Some("P-256")) => {
                let point = ec_point(32)?;
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).map_err(|_| off_curve())?;
                #[cfg(feature = "ring")]
                {
                    ring.0 = point;
                }
                Material::P256(key)
            }
            ("EC", Some("P-384")) => {
                let point = ec_point(48)?;
                let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).map_err(|_| off_curve())?;
                #[cfg(feature = "ring")]
                {
                    ring.0 = point;
                }
                Material::P384(key)
            }
            ("OKP", Some("Ed25519")) => {
                let x: [u8; 32] = bytes("x", &members.x)?
                    .try_into()
                    .map_err(|_| err("x", "is not 32 bytes".to_string()))?;
                // A key of small order verifies forged signatures under some verifiers; it is
                // never a real key.
                let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
                    .ok()
                    .filter(|key| !key.is_weak())
                    .ok_or_else(|| err("x", "is not an Ed25519 public key".to_string()))?;
                #[cfg(feature = "ring")]
                {
                    ring.0 = x.to_vec();
                }
                Material::Ed25519(key)
            }
            ("oct", _) => {
                let secret = match (&members.k, &members.k_env) {
                    (Some(_), None) => bytes("k", &members.k)?,
                    (None, Some(name)) => {
                        let value = env(name).ok_or_else(|| {
                            err("k_env", format!("names {name:?}, which is not set in the VM's environment"))
                        })?;
                        Base64UrlUnpadded::decode_vec(value.trim()).map_err(|_| {
                            err("k_env", format!("{name:?} does not hold base64url without padding"))
                        })?
                    }
                    _ => {
                        return Err(err(
                            "",
                            "an oct key needs exactly one of \"k\" and \"k_env\"".to_string(),
                        ))
                    }
                };
                if secret.len() < HMAC_MIN_BYTES {
                    let problem =
                        format!("the secret is {} bytes; HMAC needs at least {HMAC_MIN_BYTES}", secret.len());
                    return Err(err("", problem));
                }
                #[cfg(feature = "ring")]
                {
                    ring.0 = secret.clone();
                }
                Material::Hmac(secret)
            }
            (kty, crv) => {
                let problem = format!("kty {kty:?} with crv {crv:?} is not a key type wsgate verifies");
                return Err(err("kty", problem));
            }
        };
        // The algorithms a key of this type can verify: the same table that sorts the keys of a
        // fetched set.
        let fits = Jwk::algorithms_of(&members.kty, members.crv.as_deref());
        let declared = match &members.alg {
            Some(name) => {
                let alg = Algorithm::from_name(name)
                    .filter(|alg| fits.contains(alg))
                    .ok_or_else(|| err("alg", format!("{name:?} does not fit a {} key", members.kty)))?;
                vec![alg]
            }
            None => fits.to_vec(),
        };
        let algorithms: Vec<Algorithm> = declared.into_iter().filter(|alg| allowed.contains(alg)).collect();
        if algorithms.is_empty() {
            let problem = format!("a {} key fits none of the configured algorithms", members.kty);
            return Err(err("", problem));
        }
        Ok(Jwk {
            kid: members.kid,
            material,
            #[cfg(feature = "ring")]
            ring,
            algorithms,
        })
    }

    /// The algorithms a key of type `kty` (and curve `crv`) can verify; none for a type wsgate
    /// does not verify.
    pub fn algorithms_of(kty: &str, crv: Option<&str>) -> &'static [Algorithm] {
        match (kty, crv) {
            ("RSA", _) => RSA_FITS,
            ("EC", Some("P-256")) => &[Algorithm::ES256],
            ("EC", Some("P-384")) => &[Algorithm::ES384],
            ("OKP", Some("Ed25519")) => &[Algorithm::EdDSA],
            ("oct", _) => HMAC_FITS,
            _ => &[],
        }
    }

    /// Whether this key may verify a token signed with `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }

    /// Verifies a JWS signature over `input` (the ASCII `header.payload`) with this build's
    /// backend. `alg` must be one the key fits; any other combination is false.
    pub fn verify(&self, alg: Algorithm, input: &[u8], signature: &[u8]) -> bool {
        self.verify_with(Backend::BUILT, alg, input, signature)
    }

    /// [`Jwk::verify`] with a given backend: the differential tests run both.
    pub fn verify_with(&self, backend: Backend, alg: Algorithm, input: &[u8], signature: &[u8]) -> bool {
        if !self.fits(alg) {
            return false;
        }
        match backend {
            Backend::RustCrypto => self.verify_rustcrypto(alg, input, signature),
            #[cfg(feature = "ring")]
            Backend::Ring => self.verify_ring(alg, input, signature),
        }
    }

    /// `ring`'s verification: constant-time where a secret is involved (HMAC), with its own
    /// limits that match wsgate's (RSA of 2048 to 8192 bits, PSS salt of the hash's size).
    #[cfg(feature = "ring")]
    fn verify_ring(&self, alg: Algorithm, input: &[u8], signature: &[u8]) -> bool {
        use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};
        let (first, second) = (&self.ring.0, &self.ring.1);
        let rsa = |parameters: &'static sig::RsaParameters| {
            RsaPublicKeyComponents { n: first, e: second }.verify(parameters, input, signature).is_ok()
        };
        let public = |algorithm: &'static dyn sig::VerificationAlgorithm| {
            UnparsedPublicKey::new(algorithm, first).verify(input, signature).is_ok()
        };
        let hmac = |algorithm: ring::hmac::Algorithm| {
            ring::hmac::verify(&ring::hmac::Key::new(algorithm, first), input, signature).is_ok()
        };
        match (&self.material, alg) {
            (Material::Hmac(_), Algorithm::HS256) => hmac(ring::hmac::HMAC_SHA256),
            (Material::Hmac(_), Algorithm::HS384) => hmac(ring::hmac::HMAC_SHA384),
            (Material::Hmac(_), Algorithm::HS512) => hmac(ring::hmac::HMAC_SHA512),
            (Material::Rsa(_), Algorithm::RS256) => rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
            (Material::Rsa(_), Algorithm::RS384) => rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
            (Material::Rsa(_), Algorithm::RS512) => rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
            (Material::Rsa(_), Algorithm::PS256) => rsa(&sig::RSA_PSS_2048_8192_SHA256),
            (Material::Rsa(_), Algorithm::PS384) => rsa(&sig::RSA_PSS_2048_8192_SHA384),
            (Material::Rsa(_), Algorithm::PS512) => rsa(&sig::RSA_PSS_2048_8192_SHA512),
            (Material::P256(_), Algorithm::ES256) => public(&sig::ECDSA_P256_SHA256_FIXED),
            (Material::P384(_), Algorithm::ES384) => public(&sig::ECDSA_P384_SHA384_FIXED),
            (Material::Ed25519(_), Algorithm::EdDSA) => public(&sig::ED25519),
            _ => false,
        }
    }

    fn verify_rustcrypto(&self, alg: Algorithm, input: &[u8], signature: &[u8]) -> bool {
        match (&self.material, alg) {
            (Material::Hmac(secret), Algorithm::HS256) => {
                hmac_verify::<Hmac<Sha256>>(secret, input, signature)
            }
            (Material::Hmac(secret), Algorithm::HS384) => {
                hmac_verify::<Hmac<Sha384>>(secret, input, signature)
            }
            (Material::Hmac(secret), Algorithm::HS512) => {
                hmac_verify::<Hmac<Sha512>>(secret, input, signature)
            }
            (Material::Rsa(key), Algorithm::RS256) => {
                pkcs1v15_verify(key, &Pkcs1v15Sign::new::<Sha256>().prefix, &Sha256::digest(input), signature)
            }
            (Material::Rsa(key), Algorithm::RS384) => {
                pkcs1v15_verify(key, &Pkcs1v15Sign::new::<Sha384>().prefix, &Sha384::digest(input), signature)
            }
            (Material::Rsa(key), Algorithm::RS512) => {
                pkcs1v15_verify(key, &Pkcs1v15Sign::new::<Sha512>().prefix, &Sha512::digest(input), signature)
            }
            // PSS with MGF1 over the same hash and a salt of the hash's size (RFC 7518 3.5).
            (Material::Rsa(key), Algorithm::PS256) => {
                rsa_verify(key, Pss::<Sha256>::new(), &Sha256::digest(input), signature)
            }
            (Material::Rsa(key), Algorithm::PS384) => {
                rsa_verify(key, Pss::<Sha384>::new(), &Sha384::digest(input), signature)
            }
            (Material::Rsa(key), Algorithm::PS512) => {
                rsa_verify(key, Pss::<Sha512>::new(), &Sha512::digest(input), signature)
            }
            // JWS carries ECDSA signatures as R || S, fixed length (RFC 7518 section 3.4).
            (Material::P256(key), Algorithm::ES256) => {
                p256::ecdsa::Signature::from_slice(signature).is_ok_and(|sig| key.verify(input, &sig).is_ok())
            }
            (Material::P384(key), Algorithm::ES384) => {
                p384::ecdsa::Signature::from_slice(signature).is_ok_and(|sig| key.verify(input, &sig).is_ok())
            }
            // verify_strict refuses small-order keys and non-canonical signatures (RFC 8032 5.1.7).
            (Material::Ed25519(key), Algorithm::EdDSA) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify_strict(input, &sig).is_ok()),
            _ => false,
        }
    }
}

/// An uncompressed SEC1 point from JWK coordinates of `size` bytes each.
fn sec1_point(x: &[u8], y: &[u8], size: usize) -> Option<Vec<u8>> {
    if x.len() != size || y.len() != size {
        return None;
    }
    let mut point = Vec::with_capacity(1 + 2 * size);
    point.push(0x04);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    Some(point)
}

/// HMAC compared in constant time (`verify_slice`).
fn hmac_verify<M: Mac + KeyInit>(secret: &[u8], input: &[u8], signature: &[u8]) -> bool {
    match <M as KeyInit>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(input);
            mac.verify_slice(signature).is_ok()
        }
        Err(_) => false,
    }
}

fn rsa_verify<S: SignatureScheme>(key: &rsa::PublicKey, scheme: S, hashed: &[u8], signature: &[u8]) -> bool {
    key.verify(scheme, hashed, signature).is_ok()
}

/// RSASSA-PKCS1-v1_5 verification (RFC 8017 section 8.2.2) with the public exponent applied by
/// square-and-multiply in variable time, over `crypto-bigint`'s Montgomery arithmetic: for
/// e = 65537, 16 squarings and one multiplication, where `rsa`'s constant-time fixed window takes
/// about 35 operations and a table built on every call. Everything a verification reads (the key,
/// the signature, the digest) is public, so its timing tells nothing (`ring` verifies the same
/// way). The encoded message is then checked, part by part, to be exactly the one expected, as
/// `rsa` checks it: `0x00 0x01 0xFF.. 0x00 DigestInfo digest`.
fn pkcs1v15_verify(key: &rsa::PublicKey, prefix: &[u8], hashed: &[u8], signature: &[u8]) -> bool {
    use rsa::traits::PublicKeyParts;
    let k = key.size();
    let t_len = prefix.len() + hashed.len();
    // The signature is exactly k bytes and, as an integer, below the modulus (steps 1 and 2.a).
    if signature.len() != k || k < t_len + 11 {
        return false;
    }
    let Ok(s) = rsa::BoxedUint::from_be_slice(signature, key.n_bits_precision()) else {
        return false;
    };
    if s >= *key.n().as_ref() {
        return false;
    }
    let em = public_exponent_vartime(key, s);
    // I2OSP(m, k): the representation is the width of the limbs, m < n fits in its last k bytes.
    let Some(split) = em.len().checked_sub(k) else {
        return false;
    };
    let (high, em) = em.split_at(split);
    let ps_len = k - t_len - 3;
    high.iter().all(|&b| b == 0)
        && em.get(..2) == Some(&[0x00, 0x01][..])
        && em.get(2..2 + ps_len).is_some_and(|ps| ps.iter().all(|&b| b == 0xff))
        && em.get(2 + ps_len) == Some(&0x00)
        && em.get(3 + ps_len..3 + ps_len + prefix.len()) == Some(prefix)
        && em.get(k - hashed.len()..) == Some(hashed)
}

/// `s^e mod n`, most significant bit of `e` first, in variable time (the inputs are public).
fn public_exponent_vartime(key: &rsa::PublicKey, s: rsa::BoxedUint) -> Box<[u8]> {
    use rsa::traits::PublicKeyParts;
    let e = key.e();
    let base = BoxedMontyForm::new(s, key.n_params());
    let mut power = base.clone();
    // The key was checked at load: e is odd and at least 3, so its top bit is bit `bits - 1`.
    for bit in (0..e.bit_width_vartime().saturating_sub(1)).rev() {
        power = power.square();
        if e.bit_vartime(bit) {
            power = power.mul(&base);
        }
    }
    power.retrieve().to_be_bytes()
}

#[cfg(test)]
#[cfg(not(target_arch = "wasm32"))]
mod tests {
    use super::*;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};

    /// A test key of tests/keys, with its size in the name (`rsa.pem` is 2048 bits, e = 65537).
    fn private_key(name: &str) -> rsa::PrivateKey {
        let path = format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"));
        let pem = std::fs::read_to_string(&path).unwrap();
        let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
        rsa::PrivateKey::from_pkcs8_der(&base64ct::Base64::decode_vec(&body).unwrap()).unwrap()
    }

    /// `m^d mod n`: a "signature" of any encoded message, well formed or not.
    fn raw_sign(key: &rsa::PrivateKey, encoded: &[u8]) -> Vec<u8> {
        let m = rsa::BoxedUint::from_be_slice(encoded, key.n_bits_precision()).unwrap();
        let s = BoxedMontyForm::new(m, key.n_params()).pow(key.d()).retrieve();
        let bytes = s.to_be_bytes();
        bytes[bytes.len() - key.size()..].to_vec()
    }

    /// EMSA-PKCS1-v1_5 (RFC 8017 section 9.2) of `hashed` under `prefix`, `k` bytes long.
    fn encoded(k: usize, prefix: &[u8], hashed: &[u8]) -> Vec<u8> {
        let mut em = vec![0x00, 0x01];
        em.resize(k - prefix.len() - hashed.len() - 1, 0xff);
        em.push(0x00);
        em.extend_from_slice(prefix);
        em.extend_from_slice(hashed);
        em
    }

    /// Encoded messages that are not the one expected, each off by one thing.
    fn malformed(k: usize, prefix: &[u8], hashed: &[u8], other_prefix: &[u8]) -> Vec<(String, Vec<u8>)> {
        let good = encoded(k, prefix, hashed);
        let t_len = prefix.len() + hashed.len();
        let mut cases = Vec::new();
        let mut flip = |what: &str, index: usize, value: u8| {
            let mut em = good.clone();
            em[index] = value;
            cases.push((format!("{what} (byte {index} = {value:#04x})"), em));
        };
        flip("block type 2", 1, 0x02);
        flip("block type 0", 1, 0x00);
        flip("padding byte first", 2, 0xfe);
        flip("padding byte middle", k / 2 - t_len / 2, 0x00);
        flip("padding byte last", k - t_len - 2, 0xfe);
        flip("no separator", k - t_len - 1, 0x01);
        flip("prefix", k - t_len, prefix[0] ^ 1);
        flip("digest first", k - hashed.len(), hashed[0] ^ 0x80);
        flip("digest last", k - 1, hashed[hashed.len() - 1] ^ 1);
        // T moved one byte left, one byte of garbage after it: the padding one byte short.
        let mut shifted = good.clone();
        shifted.remove(2);
        shifted.push(0x00);
        cases.push(("padding one byte short, a trailing byte".into(), shifted));
        cases.push(("the digest without DigestInfo".into(), encoded(k, &[], hashed)));
        cases.push(("another hash's DigestInfo".into(), encoded(k, other_prefix, hashed)));
        cases.push(("zero".into(), vec![0; k]));
        cases
    }

    /// Signatures that are not integers below the modulus, or not `k` bytes.
    fn out_of_range(key: &rsa::PrivateKey, valid: &[u8]) -> Vec<(String, Vec<u8>)> {
        let n = key.n().to_be_bytes_trimmed_vartime().to_vec();
        let mut n_padded = vec![0; key.size() - n.len()];
        n_padded.extend_from_slice(&n);
        let mut n_minus_one = n_padded.clone();
        *n_minus_one.last_mut().unwrap() -= 1; // n is odd
        let mut longer = vec![0x00];
        longer.extend_from_slice(valid);
        // The valid signature plus n and plus 2n: the same residue, where it fits in k bytes.
        let wide = key.n_bits_precision() + 128;
        let n_wide = rsa::BoxedUint::from_be_slice(&n, wide).unwrap();
        let mut plus = rsa::BoxedUint::from_be_slice(valid, wide).unwrap();
        let mut congruent = Vec::new();
        for times in 1..=2 {
            plus = plus.wrapping_add(&n_wide);
            let bytes = plus.to_be_bytes_trimmed_vartime();
            if bytes.len() <= key.size() {
                let mut padded = vec![0; key.size() - bytes.len()];
                padded.extend_from_slice(&bytes);
                congruent.push((format!("the valid signature plus {times} n"), padded));
            }
        }
        let mut cases = vec![
            ("the modulus".into(), n_padded),
            ("all ones".into(), vec![0xff; key.size()]),
            ("the modulus minus one".into(), n_minus_one),
            ("one byte short".into(), valid[1..].to_vec()),
            ("a leading zero byte more".into(), longer),
            ("empty".into(), Vec::new()),
        ];
        cases.extend(congruent);
        cases
    }

    /// Checks every hash on `name`'s key, or the first `hashes` of SHA-512, SHA-384, SHA-256.
    fn check_key(name: &str) {
        check_key_with(name, 3);
    }

    /// A hash: its name, its DigestInfo prefix, another hash's, and the digest function.
    type Scheme = (&'static str, Vec<u8>, Vec<u8>, fn(&[u8]) -> Vec<u8>);

    fn check_key_with(name: &str, hashes: usize) {
        let key = private_key(name);
        let public = key.to_public_key();
        let k = public.size();
        let schemes: [Scheme; 3] = [
            (
                "SHA-512",
                Pkcs1v15Sign::new::<Sha512>().prefix.to_vec(),
                Pkcs1v15Sign::new::<Sha256>().prefix.to_vec(),
                |m| Sha512::digest(m).to_vec(),
            ),
            (
                "SHA-384",
                Pkcs1v15Sign::new::<Sha384>().prefix.to_vec(),
                Pkcs1v15Sign::new::<Sha512>().prefix.to_vec(),
                |m| Sha384::digest(m).to_vec(),
            ),
            (
                "SHA-256",
                Pkcs1v15Sign::new::<Sha256>().prefix.to_vec(),
                Pkcs1v15Sign::new::<Sha384>().prefix.to_vec(),
                |m| Sha256::digest(m).to_vec(),
            ),
        ];
        for (hash, prefix, other_prefix, digest) in schemes.into_iter().take(hashes) {
            let hashed = digest(b"header.payload");
            let reference = |signature: &[u8]| {
                let scheme = Pkcs1v15Sign { hash_len: Some(hashed.len()), prefix: prefix.clone().into() };
                rsa_verify(&public, scheme, &hashed, signature)
            };
            let valid = raw_sign(&key, &encoded(k, &prefix, &hashed));
            assert!(pkcs1v15_verify(&public, &prefix, &hashed, &valid), "{name} {hash}: a valid signature");
            assert!(reference(&valid), "{name} {hash}: a valid signature, for rsa");
            let mut cases = out_of_range(&key, &valid);
            for (what, em) in malformed(k, &prefix, &hashed, &other_prefix) {
                cases.push((what, raw_sign(&key, &em)));
            }
            // Random signatures below the modulus (a fixed xorshift sequence: the same every run).
            let mut state = 0x9e37_79b9_7f4a_7c15_u64;
            for round in 0..32 {
                let mut random: Vec<u8> = (0..k)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                random[0] = 0;
                cases.push((format!("random {round}"), random));
            }
            for (what, signature) in cases {
                let ours = pkcs1v15_verify(&public, &prefix, &hashed, &signature);
                assert_eq!(ours, reference(&signature), "{name} {hash}, {what}: not rsa's verdict");
                assert!(!ours, "{name} {hash}, {what}: accepted");
            }
        }
    }

    #[test]
    fn leading_zero_bytes_of_a_modulus_do_not_widen_the_key() {
        let jwks: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{}/tests/keys/jwks.json", env!("CARGO_MANIFEST_DIR"))).unwrap(),
        )
        .unwrap();
        let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == "rsa-1").unwrap().clone();
        let n = Base64UrlUnpadded::decode_vec(jwk["n"].as_str().unwrap()).unwrap();
        let mut padded = jwk.clone();
        let mut zeros = vec![0u8; 4096];
        zeros.extend_from_slice(&n);
        padded["n"] = Base64UrlUnpadded::encode_string(&zeros).into();
        let precision = |jwk: &serde_json::Value| {
            let compiled =
                Jwk::compile(jwk, &[Algorithm::RS256], RSA_MAX_BITS, "keys[0]", &|_| None).unwrap();
            match compiled.material {
                Material::Rsa(key) => key.n_bits_precision(),
                _ => panic!("not an RSA key"),
            }
        };
        assert_eq!(precision(&padded), precision(&jwk));
        assert_eq!(precision(&jwk), 2048);
    }

    #[test]
    fn pkcs1v15_verification_agrees_with_rsa_on_a_2048_bit_key() {
        check_key("rsa.pem");
    }

    #[test]
    fn pkcs1v15_verification_agrees_with_rsa_on_a_2050_bit_key_not_a_whole_number_of_bytes() {
        check_key("rsa-2050.pem");
    }

    #[test]
    fn pkcs1v15_verification_agrees_with_rsa_on_a_3072_bit_key_with_exponent_3() {
        check_key("rsa-3072-e3.pem");
    }

    #[test]
    fn a_valid_signature_whose_first_byte_is_zero_is_accepted() {
        let key = private_key("rsa.pem");
        let public = key.to_public_key();
        let prefix = Pkcs1v15Sign::new::<Sha256>().prefix.to_vec();
        // About one signature in 256 starts with a zero byte: look for one among messages.
        let (hashed, signature) = (0..4096)
            .map(|i| Sha256::digest(format!("header.payload{i}").as_bytes()).to_vec())
            .map(|hashed| {
                let signature = raw_sign(&key, &encoded(public.size(), &prefix, &hashed));
                (hashed, signature)
            })
            .find(|(_, signature)| signature[0] == 0)
            .unwrap();
        assert!(pkcs1v15_verify(&public, &prefix, &hashed, &signature));
        let scheme = Pkcs1v15Sign::new::<Sha256>();
        assert!(rsa_verify(&public, scheme, &hashed, &signature));
    }

    #[test]
    fn pkcs1v15_verification_agrees_with_rsa_on_a_key_with_the_largest_exponent_allowed() {
        check_key("rsa-2048-e33.pem");
    }

    #[test]
    fn pkcs1v15_verification_agrees_with_rsa_on_a_4096_bit_key() {
        check_key("rsa-4096.pem");
    }

    #[test]
    fn pkcs1v15_verification_agrees_with_rsa_on_an_8192_bit_key() {
        // SHA-512 only: the private-key operations that make the malformed signatures are slow
        // at this size, and the other hashes are checked on the other keys.
        check_key_with("rsa-8192.pem", 1);
    }
}
