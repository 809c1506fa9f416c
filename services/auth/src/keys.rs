//! The RSA key pair that signs access tokens. Generated on first start and kept in a PEM file
//! readable by the owner only (mode 0600), so tokens survive restarts; published as a JWKS.

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

pub struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    n: String,
    e: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Jwk {
    kty: &'static str,
    #[serde(rename = "use")]
    use_: &'static str,
    alg: &'static str,
    kid: String,
    n: String,
    e: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

impl SigningKey {
    /// Loads the key at `path`, or generates one and writes it there.
    pub fn load_or_create(path: &Path) -> anyhow::Result<SigningKey> {
        let private = if path.exists() {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            RsaPrivateKey::from_pkcs8_pem(&pem)
                .with_context(|| format!("{} is not a PKCS#8 RSA key", path.display()))?
        } else {
            let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
                .context("generating the RSA key")?;
            write_private(path, key.to_pkcs8_pem(LineEnding::LF)?.as_bytes())?;
            tracing::info!(path = %path.display(), "generated a new token signing key");
            key
        };
        Self::from_private(&private)
    }

    fn from_private(private: &RsaPrivateKey) -> anyhow::Result<SigningKey> {
        let pem = private.to_pkcs8_pem(LineEnding::LF)?;
        let n = URL_SAFE_NO_PAD.encode(private.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(private.e().to_bytes_be());
        // RFC 7638-style thumbprint over the public parts: the same key always has the same kid.
        let digest = Sha256::digest(format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#));
        let kid = URL_SAFE_NO_PAD.encode(&digest[..16]);
        Ok(SigningKey {
            kid,
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes())?,
            decoding: DecodingKey::from_rsa_components(&n, &e)?,
            n,
            e,
        })
    }

    pub fn sign<T: Serialize>(&self, claims: &T) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: vec![Jwk {
                kty: "RSA",
                use_: "sig",
                alg: "RS256",
                kid: self.kid.clone(),
                n: self.n.clone(),
                e: self.e.clone(),
            }],
        }
    }

    pub fn decoding_keys(&self) -> HashMap<String, DecodingKey> {
        HashMap::from([(self.kid.clone(), self.decoding.clone())])
    }
}

fn write_private(path: &Path, pem: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    // Write beside the target and rename, so a crash never leaves half a key behind.
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(pem)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_private_and_reloaded_with_the_same_kid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing.pem");
        let a = SigningKey::load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let b = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(a.kid, b.kid);
        let token = a
            .sign(&serde_json::json!({"sub": "x", "exp": 4_000_000_000_i64}))
            .unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::RS256);
        v.required_spec_claims.clear();
        v.validate_aud = false;
        jsonwebtoken::decode::<serde_json::Value>(&token, &b.decoding_keys()[&a.kid], &v).unwrap();
    }
}
