//! Signing key, access-token minting and verification, and revocation.
//!
//! Tokens are RS256 JWTs shaped like Kinde's M2M tokens. The key is RSA 2048, generated
//! at first start and kept in the state file so tokens minted before a restart still
//! verify. Revocation is by `jti`: the ledger remembers every unexpired token issued, so
//! "revoke everything issued so far" also covers tokens minted before a restart.

use std::collections::BTreeMap;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::LineEnding;
use rsa::rand_core::OsRng;
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};

use super::state::random_hex;

/// The RSA key that signs every token, with the derived JWT keys.
pub(crate) struct SigningKey {
    pem: String,
    kid: String,
    public: RsaPublicKey,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh RSA 2048 key (a second or so even optimised).
    pub(crate) fn generate() -> anyhow::Result<Self> {
        let key = RsaPrivateKey::new(&mut OsRng, 2048).context("generating RSA key")?;
        let pem = key
            .to_pkcs1_pem(LineEnding::LF)
            .context("encoding RSA key")?
            .to_string();
        Self::from_key(key, pem)
    }

    /// The key stored in a state file (PKCS#1 PEM).
    pub(crate) fn from_pem(pem: &str) -> anyhow::Result<Self> {
        let key = RsaPrivateKey::from_pkcs1_pem(pem).context("decoding the stored RSA key")?;
        Self::from_key(key, pem.to_owned())
    }

    fn from_key(key: RsaPrivateKey, pem: String) -> anyhow::Result<Self> {
        let der = key.to_pkcs1_der().context("encoding RSA key")?;
        let public = key.to_public_key();
        let n = public.n().to_bytes_be();
        let e = public.e().to_bytes_be();
        // kid: a stable fingerprint of the public key, so a reloaded key keeps its kid.
        let kid = format!("{:016x}", fnv1a(&n));
        Ok(Self {
            pem,
            kid,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            decoding: DecodingKey::from_rsa_raw_components(&n, &e),
            public,
        })
    }

    pub(crate) fn pem(&self) -> &str {
        &self.pem
    }

    /// The JWKS document served at `/.well-known/jwks.json`.
    pub(crate) fn jwks(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": [{
                "kty": "RSA",
                "alg": "RS256",
                "use": "sig",
                "kid": self.kid,
                "n": URL_SAFE_NO_PAD.encode(self.public.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(self.public.e().to_bytes_be()),
            }]
        })
    }

    pub(crate) fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).context("signing token")
    }

    /// Checks signature, `exp`, `iss` and that `aud` contains `audience`.
    pub(crate) fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
    ) -> Result<Claims, String> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = 0;
        validation.set_audience(&[audience]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| e.to_string())
    }
}

/// Claims of a Kinde M2M access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub(crate) aud: Vec<String>,
    pub(crate) azp: String,
    pub(crate) exp: i64,
    pub(crate) gty: Vec<String>,
    pub(crate) iat: i64,
    pub(crate) iss: String,
    pub(crate) jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) org_code: Option<String>,
    pub(crate) scope: String,
    pub(crate) scp: Vec<String>,
    /// Kinde's token format version.
    pub(crate) v: String,
}

impl Claims {
    pub(crate) fn new(
        issuer: &str,
        audience: &str,
        client_id: &str,
        scopes: Vec<String>,
        org_code: Option<String>,
        now: i64,
        ttl_secs: i64,
    ) -> Self {
        Self {
            aud: vec![audience.to_owned()],
            azp: client_id.to_owned(),
            exp: now + ttl_secs,
            gty: vec!["client_credentials".to_owned()],
            iat: now,
            iss: issuer.to_owned(),
            jti: uuid_v4(),
            org_code,
            scope: scopes.join(" "),
            scp: scopes,
            v: "2".to_owned(),
        }
    }
}

/// Issued and revoked token ids, each with its expiry so the ledger can be pruned.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TokenLedger {
    issued: BTreeMap<String, i64>,
    revoked: BTreeMap<String, i64>,
}

impl TokenLedger {
    pub(crate) fn record(&mut self, claims: &Claims, now: i64) {
        self.prune(now);
        self.issued.insert(claims.jti.clone(), claims.exp);
    }

    pub(crate) fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.contains_key(jti)
    }

    /// Revokes every token issued so far; returns how many were still unexpired.
    pub(crate) fn revoke_all(&mut self, now: i64) -> usize {
        self.prune(now);
        let n = self.issued.len();
        self.revoked.append(&mut self.issued);
        n
    }

    fn prune(&mut self, now: i64) {
        self.issued.retain(|_, exp| *exp > now);
        self.revoked.retain(|_, exp| *exp > now);
    }
}

/// 64-bit FNV-1a: enough to tell keys apart in a `kid`; not a security property.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn uuid_v4() -> String {
    let h = random_hex(32);
    // Version 4, RFC 4122 variant.
    let variant = ["8", "9", "a", "b"][usize::from(h.as_bytes()[16] % 4)];
    format!(
        "{}-{}-4{}-{}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        variant,
        &h[17..20],
        &h[20..32]
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_reload() {
        let key = SigningKey::generate().unwrap();
        let claims = Claims::new(
            "http://iss",
            "aud",
            "client",
            vec!["a".into()],
            None,
            jiff::Timestamp::now().as_second(),
            60,
        );
        let token = key.sign(&claims).unwrap();
        assert_eq!(key.verify(&token, "http://iss", "aud").unwrap(), claims);
        assert!(key.verify(&token, "http://iss", "other").is_err());
        assert!(key.verify(&token, "http://other", "aud").is_err());
        let reloaded = SigningKey::from_pem(key.pem()).unwrap();
        assert_eq!(reloaded.kid, key.kid);
        assert!(reloaded.verify(&token, "http://iss", "aud").is_ok());
        let expired = Claims::new("http://iss", "aud", "c", vec![], None, 1000, 60);
        assert!(
            key.verify(&key.sign(&expired).unwrap(), "http://iss", "aud")
                .is_err()
        );
    }

    #[test]
    fn uuid_shape() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn revoke_all_covers_issued_tokens_only() {
        let mut ledger = TokenLedger::default();
        let a = Claims::new("i", "a", "c", vec![], None, 100, 60);
        ledger.record(&a, 100);
        assert_eq!(ledger.revoke_all(110), 1);
        let b = Claims::new("i", "a", "c", vec![], None, 120, 60);
        ledger.record(&b, 120);
        assert!(ledger.is_revoked(&a.jti));
        assert!(!ledger.is_revoked(&b.jti));
    }
}
