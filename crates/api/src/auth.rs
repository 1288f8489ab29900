//! Bearer API keys. Only SHA-256 hashes are stored; a key's tenant and tier
//! scope everything the request can see.
//!
//! Worker tokens (`vgw_…`) are a separate credential for worker processes:
//! [`WorkerCaller`] accepts only them, [`Caller`] never does, so a leaked
//! worker token cannot read tenants' videos and a tenant key cannot take
//! jobs.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use rand::Rng;
use sha2::{Digest, Sha256};
use videogen_core::store::{ApiKey, WorkerToken};
use videogen_core::{TenantId, Tier};

use crate::error::ApiError;
use crate::state::AppState;

/// Secret keys look like `vg_` + 40 base62 characters (~238 bits).
const KEY_PREFIX: &str = "vg_";
const KEY_RANDOM_CHARS: usize = 40;
/// Worker tokens look like `vgw_` + 40 base62 characters: recognisable in
/// logs and configs, and never taken for a tenant key.
pub const WORKER_TOKEN_PREFIX: &str = "vgw_";
/// Public ids of worker tokens start with this (API key ids with `key_`).
pub const WORKER_TOKEN_ID_PREFIX: &str = "wtok_";
/// Characters of a secret kept in the clear, to recognise it in listings.
const SHOWN_PREFIX_CHARS: usize = 8;
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

fn random_secret(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..KEY_RANDOM_CHARS)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

/// A new random secret key.
pub fn generate_secret() -> String {
    random_secret(KEY_PREFIX)
}

/// A new random worker token secret (`vgw_…`).
pub fn generate_worker_secret() -> String {
    random_secret(WORKER_TOKEN_PREFIX)
}

/// Whether `secret` is shaped like a worker token.
pub fn is_worker_secret(secret: &str) -> bool {
    secret.starts_with(WORKER_TOKEN_PREFIX)
}

/// Whether `name` may label a worker token: 1-64 of `[A-Za-z0-9_.-]`, so it
/// can appear in worker ids (`{node}/{name}`), logs and tables as is.
pub fn valid_worker_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The stored record for a worker token `secret` (the secret itself is not kept).
pub fn worker_token_record(secret: &str, name: &str, now_ms: i64) -> WorkerToken {
    let hash = hash_key(secret);
    WorkerToken {
        id: format!("{WORKER_TOKEN_ID_PREFIX}{}", &hash[..16]),
        prefix: secret.chars().take(SHOWN_PREFIX_CHARS).collect(),
        hash,
        name: name.to_owned(),
        created_at_ms: now_ms,
        revoked_at_ms: None,
    }
}

/// The stored record for `secret` (the secret itself is not kept).
pub fn key_record(secret: &str, tenant: TenantId, tier: Tier, admin: bool, now_ms: i64) -> ApiKey {
    let hash = hash_key(secret);
    ApiKey {
        id: format!("key_{}", &hash[..16]),
        prefix: secret.chars().take(SHOWN_PREFIX_CHARS).collect(),
        hash,
        tenant,
        tier,
        admin,
        created_at_ms: now_ms,
        revoked_at_ms: None,
    }
}

/// The authenticated worker process (a worker token, never a tenant key).
#[derive(Debug, Clone)]
pub struct WorkerCaller {
    pub token_id: String,
    /// The token's label, e.g. the worker's host: for logs.
    pub name: String,
}

/// The bearer token of the request, bounded in size.
fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("Missing API key: send 'Authorization: Bearer <key>'."))?;
    header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= TOKEN_CHARS_MAX)
        .ok_or_else(|| ApiError::unauthorized("Malformed Authorization header: expected 'Bearer <key>'."))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts)?;
        // Refused by shape, before any lookup: even a worker token that was
        // also installed as an API key must not act as a tenant.
        if is_worker_secret(token) {
            return Err(ApiError::unauthorized(
                "Worker tokens cannot call the tenant API; use an API key.",
            ));
        }
        let key = state
            .store
            .api_key_by_hash(&hash_key(token))
            .await
            .map_err(|e| ApiError::store("api key lookup", e))?
            .filter(|k| k.revoked_at_ms.is_none())
            .ok_or_else(|| ApiError::unauthorized("Incorrect API key provided."))?;
        crate::layers::record_principal(&parts.extensions, || format!("tenant:{}", key.tenant));
        Ok(Caller {
            tenant: key.tenant,
            tier: key.tier,
            admin: key.admin,
            key_id: key.id,
        })
    }
}

impl FromRequestParts<AppState> for WorkerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts)?;
        if !is_worker_secret(token) {
            return Err(ApiError::unauthorized(format!(
                "This endpoint needs a worker token ({WORKER_TOKEN_PREFIX}…), not an API key."
            )));
        }
        let rec = state
            .store
            .worker_token_by_hash(&hash_key(token))
            .await
            .map_err(|e| ApiError::store("worker token lookup", e))?
            .filter(|t| t.revoked_at_ms.is_none())
            .ok_or_else(|| ApiError::unauthorized("Incorrect worker token provided."))?;
        crate::layers::record_principal(&parts.extensions, || format!("worker:{}", rec.name));
        Ok(WorkerCaller {
            token_id: rec.id,
            name: rec.name,
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
    use crate::testing::{api_key, app, error_json, parts, worker_token};
    use axum::http::StatusCode;

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

    #[test]
    fn worker_secrets_are_recognisable_and_hash_like_keys() {
        let w = generate_worker_secret();
        assert!(w.starts_with("vgw_") && w.len() == 44, "{w}");
        assert!(is_worker_secret(&w));
        assert!(!is_worker_secret(&generate_secret()));
        assert_ne!(w, generate_worker_secret());
        let rec = worker_token_record(&w, "gpu-1", 5);
        assert_eq!(rec.hash, hash_key(&w));
        assert!(rec.id.starts_with("wtok_") && !rec.hash.contains(&w[4..]));
        assert_eq!((rec.prefix.as_str(), rec.name.as_str()), (&w[..8], "gpu-1"));
        assert_eq!((rec.created_at_ms, rec.revoked_at_ms), (5, None));
        for ok in ["gpu-1", "host.example_2", &"a".repeat(64)] {
            assert!(valid_worker_name(ok), "{ok}");
        }
        for bad in ["", "a/b", "has space", "tab\t", &"a".repeat(65), "é"] {
            assert!(!valid_worker_name(bad), "{bad:?}");
        }
    }

    async fn caller(state: &AppState, auth: Option<&str>) -> Result<Caller, ApiError> {
        <Caller as FromRequestParts<AppState>>::from_request_parts(&mut parts(auth), state).await
    }

    async fn worker(state: &AppState, auth: Option<&str>) -> Result<WorkerCaller, ApiError> {
        WorkerCaller::from_request_parts(&mut parts(auth), state).await
    }

    /// A 401 in OpenAI's error envelope.
    async fn assert_401(e: ApiError) -> String {
        let (status, body) = error_json(e).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"]["type"], "authentication_error", "{body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
        body["error"]["message"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn worker_caller_accepts_only_live_worker_tokens() {
        let app = app().await;
        let st = &app.state;
        let (token, rec) = worker_token(st, "gpu-host-1").await;
        let w = worker(st, Some(&format!("Bearer {token}"))).await.unwrap();
        assert_eq!((w.token_id.as_str(), w.name.as_str()), (rec.id.as_str(), "gpu-host-1"));

        let key = api_key(st, "acme", false).await;
        let admin = api_key(st, "ops", true).await;
        for auth in [format!("Bearer {key}"), format!("Bearer {admin}")] {
            let msg = assert_401(worker(st, Some(&auth)).await.unwrap_err()).await;
            assert!(msg.contains("worker token"), "{msg}");
        }
        let unknown = generate_worker_secret();
        for auth in [
            None,
            Some("Basic abc"),
            Some("Bearer "),
            Some(&*format!("Bearer {unknown}")),
        ] {
            assert_401(worker(st, auth).await.unwrap_err()).await;
        }
        assert!(st.store.revoke_worker_token(&rec.id, 1).await.unwrap());
        let msg = assert_401(worker(st, Some(&format!("Bearer {token}"))).await.unwrap_err()).await;
        assert_eq!(msg, "Incorrect worker token provided.");
    }

    #[tokio::test]
    async fn tenant_caller_rejects_worker_tokens() {
        let app = app().await;
        let st = &app.state;
        let key = api_key(st, "acme", true).await;
        let c = caller(st, Some(&format!("Bearer {key}"))).await.unwrap();
        assert_eq!((c.tenant.as_str(), c.admin), ("acme", true));

        let (token, _) = worker_token(st, "gpu-host-1").await;
        let msg = assert_401(caller(st, Some(&format!("Bearer {token}"))).await.unwrap_err()).await;
        assert!(msg.contains("Worker tokens cannot call the tenant API"), "{msg}");
        // Even if the same secret were also installed as an API key.
        let rec = key_record(&token, TenantId::parse("acme").unwrap(), Tier::Paid, true, 0);
        st.store.insert_api_key(&rec).await.unwrap();
        assert_401(caller(st, Some(&format!("Bearer {token}"))).await.unwrap_err()).await;
    }
}
