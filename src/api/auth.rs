//! Who may use the console and the API. Users are configured with Argon2id password hashes
//! (`fcdnode hash-password`); a browser signs in once and carries a session cookie, scripts send
//! HTTP Basic credentials. With no users configured the API is open, which the configuration
//! allows only on a loopback address.
//!
//! Cross-site requests cannot act: every non-GET request whose `Origin` is another site is
//! refused, and the session cookie is `SameSite=Strict`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;

use super::ApiState;
use crate::audit::{AuditEvent, AuditTrail};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "fcdnode_session";
/// Sessions kept at once; the oldest goes first beyond this.
const MAX_SESSIONS: usize = 256;
/// Password checks at once: each Argon2id verification takes ~19 MiB, so a flood of sign-in
/// attempts must queue instead of allocating without bound.
const CONCURRENT_CHECKS: usize = 2;
/// Longest user name or password read from a request.
const MAX_CREDENTIAL: usize = 1024;

/// `[[api.users]]`: one person or script allowed to sign in.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiUser {
    /// Sign-in name.
    pub name: String,
    /// Argon2id PHC string from `fcdnode hash-password` (never the password itself).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password_hash: String,
    /// A file holding that string instead (a Docker or Kubernetes secret); read when the
    /// configuration is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash_file: Option<std::path::PathBuf>,
}

/// Why a password could not be hashed or a configured hash is unusable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PasswordError(String);

/// Hashes `password` into an Argon2id PHC string with a random salt.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.is_empty() {
        return Err(PasswordError("the password is empty".into()));
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| PasswordError(format!("cannot hash the password: {e}")))
}

/// Checks that `hash` is a PHC string Argon2 can verify against.
pub fn check_hash(hash: &str) -> Result<(), PasswordError> {
    let parsed = PasswordHash::new(hash).map_err(|e| PasswordError(format!("not a PHC password hash: {e}")))?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(PasswordError(format!(
            "algorithm {} is not Argon2 (use fcdnode hash-password)",
            parsed.algorithm
        )));
    }
    Ok(())
}

struct Session {
    user: String,
    expires: Instant,
}

/// Configured users and open sessions.
pub struct Auth {
    users: Vec<ApiUser>,
    session_ttl: Duration,
    sessions: Mutex<HashMap<String, Session>>,
    checks: tokio::sync::Semaphore,
    /// Verified against when the user name is unknown, so both answers take as long.
    decoy: String,
}

impl Auth {
    /// From `[api]`: its users and session lifetime.
    pub fn new(users: Vec<ApiUser>, session_ttl: Duration) -> Self {
        Self {
            users,
            session_ttl,
            sessions: Mutex::default(),
            checks: tokio::sync::Semaphore::new(CONCURRENT_CHECKS),
            decoy: hash_password("decoy").unwrap_or_default(),
        }
    }

    /// No users: every request passes (the configuration allows this on loopback only).
    pub fn open() -> Self {
        Self::new(Vec::new(), Duration::ZERO)
    }

    /// Whether requests must be signed in.
    pub fn required(&self) -> bool {
        !self.users.is_empty()
    }

    /// The configured user `name` when `password` is theirs.
    pub async fn check_password(&self, name: &str, password: &str) -> Option<String> {
        if name.len() > MAX_CREDENTIAL || password.len() > MAX_CREDENTIAL {
            return None;
        }
        let user = self.users.iter().find(|u| u.name == name);
        let hash = user.map_or(self.decoy.clone(), |u| u.password_hash.clone());
        let password = password.to_owned();
        let _permit = self.checks.acquire().await.ok()?;
        let verified = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .unwrap_or(false);
        user.filter(|_| verified).map(|u| u.name.clone())
    }

    /// Opens a session for `user`; returns its token (256 random bits, hex).
    pub fn open_session(&self, user: &str) -> String {
        let token: String = rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            token.clone(),
            Session {
                user: user.to_owned(),
                expires: now + self.session_ttl,
            },
        );
        token
    }

    /// The user of a live session.
    pub fn session_user(&self, token: &str) -> Option<String> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .get(token)
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.user.clone())
    }

    /// Ends a session; returns its user.
    pub fn close_session(&self, token: &str) -> Option<String> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.remove(token).map(|s| s.user)
    }

    /// Records a sign-in or sign-out in the log (failures at warn) and the audit trail. The name
    /// appears only when it is a configured user's: a mistyped name may be a password.
    pub fn record(&self, audit: &AuditTrail, given: &str, client: &str, login: bool, success: bool) {
        let user = if self.users.iter().any(|u| u.name == given) {
            given.to_owned()
        } else {
            "(unknown user)".to_owned()
        };
        match (login, success) {
            (true, true) => tracing::info!(%user, %client, "console sign-in"),
            (true, false) => tracing::warn!(%user, %client, "console sign-in failed"),
            (false, _) => tracing::info!(%user, %client, "console sign-out"),
        }
        audit.record(&AuditEvent::UserAuthentication {
            user,
            address: client.to_owned(),
            login,
            success,
        });
    }
}

/// Who is making a request (set by [`gate`]); `None` when sign-in is not required.
#[derive(Clone, Debug, Default)]
pub struct Viewer {
    /// The signed-in user.
    pub user: Option<String>,
}

/// The session token in the request's cookies.
///
/// Hand-parsed: one cookie of our own, no need for a cookie-jar crate.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// The `Set-Cookie` value for a new session (or, with `None`, one that clears it).
pub fn session_cookie(token: Option<&str>) -> String {
    match token {
        Some(t) => format!("{SESSION_COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict"),
        None => format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

/// The client's address, for logs and the audit trail.
pub fn client_address(request: &Request) -> String {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |ConnectInfo(a)| a.ip().to_string())
}

/// User and password of an HTTP Basic `Authorization` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?.trim();
    if encoded.len() > 4 * MAX_CREDENTIAL {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Whether a state-changing request comes from another site (its `Origin` names another host,
/// or the browser says so): such a request is refused whoever is signed in.
fn cross_site(request: &Request) -> bool {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return false;
    }
    let headers = request.headers();
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    origin_host != host
}

/// Whether `path` is a console page (a browser is sent to the sign-in page) rather than the
/// JSON API (which answers 401).
fn is_page(path: &str) -> bool {
    path == "/" || path.starts_with("/console")
}

/// Middleware on every route but the probes, metrics and the sign-in page: refuses cross-site
/// actions, then lets the request through when sign-in is not required, the session cookie is
/// live, or Basic credentials are a configured user's.
pub async fn gate(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    if cross_site(&request) {
        return super::ApiError::new(StatusCode::FORBIDDEN, "cross-site request refused").into_response();
    }
    let auth = &state.auth;
    let user = if !auth.required() {
        None
    } else if let Some(user) = session_token(request.headers()).and_then(|t| auth.session_user(&t)) {
        Some(user)
    } else if let Some((name, password)) = basic_credentials(request.headers()) {
        match auth.check_password(&name, &password).await {
            Some(user) => Some(user),
            None => {
                auth.record(&state.audit, &name, &client_address(&request), true, false);
                return super::ApiError::new(StatusCode::UNAUTHORIZED, "wrong user name or password").into_response();
            }
        }
    } else if is_page(request.uri().path()) {
        return Redirect::to("/sign-in").into_response();
    } else {
        return super::ApiError::new(StatusCode::UNAUTHORIZED, "sign-in required").into_response();
    };
    request.extensions_mut().insert(Viewer { user });
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_hash_and_verify_and_sessions_expire() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        check_hash(&hash).unwrap();
        assert!(check_hash("plaintext").is_err());
        assert!(hash_password("").is_err());
        let auth = Auth::new(
            vec![ApiUser {
                name: "admin".into(),
                password_hash: hash,
                password_hash_file: None,
            }],
            Duration::from_millis(200),
        );
        assert!(auth.required());
        assert_eq!(
            auth.check_password("admin", "correct horse").await.as_deref(),
            Some("admin")
        );
        assert_eq!(auth.check_password("admin", "wrong").await, None);
        assert_eq!(auth.check_password("nobody", "correct horse").await, None);
        assert_eq!(auth.check_password("admin", &"x".repeat(5000)).await, None);
        let token = auth.open_session("admin");
        assert_eq!(token.len(), 64);
        assert_ne!(token, auth.open_session("admin"));
        assert_eq!(auth.session_user(&token).as_deref(), Some("admin"));
        assert_eq!(auth.session_user("forged"), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(auth.session_user(&token), None, "expired");
        let token = auth.open_session("admin");
        assert_eq!(auth.close_session(&token).as_deref(), Some("admin"));
        assert_eq!(auth.session_user(&token), None, "closed");
        assert!(!Auth::open().required());
    }

    #[test]
    fn sessions_are_bounded() {
        let auth = Auth::new(Vec::new(), Duration::from_secs(60));
        let first = auth.open_session("a");
        for _ in 0..MAX_SESSIONS {
            auth.open_session("a");
        }
        assert_eq!(auth.sessions.lock().unwrap().len(), MAX_SESSIONS);
        assert_eq!(auth.session_user(&first), None, "the oldest went first");
    }

    #[test]
    fn cookies_and_basic_credentials_parse() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=1; fcdnode_session=abc ;b=2".parse().unwrap());
        assert_eq!(session_token(&headers).as_deref(), Some("abc"));
        assert!(session_cookie(Some("abc")).contains("SameSite=Strict"));
        assert!(session_cookie(None).contains("Max-Age=0"));
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:pa:ss");
        headers.insert(header::AUTHORIZATION, format!("Basic {basic}").parse().unwrap());
        assert_eq!(basic_credentials(&headers), Some(("admin".into(), "pa:ss".into())));
        headers.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(basic_credentials(&headers), None);
    }

    #[test]
    fn only_same_site_actions_pass() {
        let request = |method: Method, origin: Option<&str>| {
            let mut b = Request::builder()
                .method(method)
                .uri("/x")
                .header(header::HOST, "10.0.0.5:8080");
            if let Some(o) = origin {
                b = b.header(header::ORIGIN, o);
            }
            b.body(axum::body::Body::empty()).unwrap()
        };
        assert!(!cross_site(&request(Method::POST, None)), "scripts send no Origin");
        assert!(!cross_site(&request(Method::POST, Some("http://10.0.0.5:8080"))));
        assert!(cross_site(&request(Method::POST, Some("https://evil.example"))));
        assert!(!cross_site(&request(Method::GET, Some("https://evil.example"))));
    }
}
