//! Bearer API keys. Only SHA-256 hashes are stored; a key's tenant and tier
//! scope everything the request can see.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use rand::Rng;
use sha2::{Digest, Sha256};
use videogen_core::store::ApiKey;
use videogen_core::{TenantId, Tier};

use crate::error::ApiError;
use crate::state::AppState;

/// Secret keys look like `vg_` + 40 base62 characters (~238 bits).
const KEY_PREFIX: &str = "vg_";
const KEY_RANDOM_CHARS: usize = 40;
/// Longest bearer token even looked at.
const TOKEN_CHARS_MAX: usize = 256;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
    pub tier: Tier,
    pub admin: bool,
    pub key_id: String,
}

pub fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new random secret key.
pub fn generate_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..KEY_RANDOM_CHARS)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{KEY_PREFIX}{tail}")
}

/// The stored record for `secret` (the secret itself is not kept).
pub fn key_record(secret: &str, tenant: TenantId, tier: Tier, admin: bool, now_ms: i64) -> ApiKey {
    let hash = hash_key(secret);
    ApiKey {
        id: format!("key_{}", &hash[..16]),
        prefix: secret.chars().take(8).collect(),
        hash,
        tenant,
        tier,
        admin,
        created_at_ms: now_ms,
        revoked_at_ms: None,
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("Missing API key: send 'Authorization: Bearer <key>'."))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= TOKEN_CHARS_MAX)
            .ok_or_else(|| ApiError::unauthorized("Malformed Authorization header: expected 'Bearer <key>'."))?;
        let key = state
            .store
            .api_key_by_hash(&hash_key(token))
            .await
            .map_err(|e| ApiError::unavailable("api key lookup", &e))?
            .filter(|k| k.revoked_at_ms.is_none())
            .ok_or_else(|| ApiError::unauthorized("Incorrect API key provided."))?;
        Ok(Caller {
            tenant: key.tenant,
            tier: key.tier,
            admin: key.admin,
            key_id: key.id,
        })
    }
}

impl OptionalFromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Option<Self>, Self::Rejection> {
        <Caller as FromRequestParts<AppState>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hash_stably() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert!(a.starts_with("vg_") && a.len() == 43);
        assert_eq!(hash_key(&a), hash_key(&a));
        assert_ne!(hash_key(&a), hash_key(&b));
        let rec = key_record(&a, TenantId::parse("t").unwrap(), Tier::Paid, false, 0);
        assert!(!rec.hash.contains(&a[3..]));
        assert_eq!(rec.prefix, &a[..8]);
    }
}
