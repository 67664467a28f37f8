//! Who may call the API: HTTP Basic credentials (A1111's `--api-auth`), allowed cross-origin callers (A1111's
//! `--cors-allow-origins`), cross-site POSTs refused, and `Host` checked on loopback servers (DNS rebinding).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::state::ServerState;

/// The server's access rules; the default lets every same-origin caller in, as A1111 without flags does.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    /// `user:password` pairs; empty = no authentication.
    pub credentials: Vec<String>,
    /// Origins (`https://app.example`) whose browsers may call the API; `*` allows any.
    pub cors_allow_origins: Vec<String>,
    /// The server listens on a loopback address: only loopback `Host` names are answered.
    pub loopback_only: bool,
}

impl AccessPolicy {
    /// Parses A1111's `--api-auth user:pass[,user2:pass2]`.
    pub fn parse_credentials(value: &str) -> Result<Vec<String>, String> {
        value
            .split(',')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once(':') {
                Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok(pair.to_owned()),
                _ => Err(format!("--api-auth: {pair:?} is not user:password")),
            })
            .collect()
    }

    fn allows_origin(&self, origin: &str) -> bool {
        self.cors_allow_origins.iter().any(|allowed| allowed == "*" || allowed.trim_end_matches('/') == origin)
    }
}

/// The middleware applying [`AccessPolicy`] to every request.
pub(crate) async fn enforce(State(state): State<Arc<ServerState>>, request: Request<Body>, next: Next) -> Response {
    let policy = &state.access;
    let headers = request.headers();
    if policy.loopback_only && !host_is_loopback(headers) {
        return refuse(StatusCode::FORBIDDEN, "the Host header names another machine; this server answers loopback names only (a DNS-rebinding guard). Bind to another address to serve remote clients".to_owned());
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let allowed_origin = origin.as_deref().filter(|o| policy.allows_origin(o)).map(str::to_owned);
    if request.method() == Method::OPTIONS && allowed_origin.is_some() {
        return with_cors(StatusCode::NO_CONTENT.into_response(), allowed_origin.as_deref(), true);
    }
    if let Some(origin) = origin.as_deref()
        && allowed_origin.is_none()
        && !is_safe_method(request.method())
        && !same_origin(origin, headers)
    {
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "cross-site request from {origin} refused; start sdrt serve with --cors-allow-origins {origin} to allow it"
            ),
        );
    }
    if !policy.credentials.is_empty() && !authorised(headers, &policy.credentials) {
        let mut response = refuse(StatusCode::UNAUTHORIZED, "Incorrect username or password".to_owned());
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
        return response;
    }
    with_cors(next.run(request).await, allowed_origin.as_deref(), false)
}

fn is_safe_method(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// `Origin` (`scheme://host[:port]`) names the host the request was sent to.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    origin.split_once("://").is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

fn host_is_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else { return true };
    let name = if host.starts_with('[') {
        host.split(']').next().map(|h| h.trim_start_matches('['))
    } else {
        host.split(':').next()
    };
    matches!(name, Some("localhost" | "127.0.0.1" | "::1")) || name.is_some_and(|n| n.starts_with("127."))
}

fn authorised(headers: &HeaderMap, credentials: &[String]) -> bool {
    let Some(encoded) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
    else {
        return false;
    };
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else { return false };
    // Every pair is compared in full, so the time taken does not say which pair or how much of it matched.
    credentials.iter().fold(false, |found, pair| found | constant_time_eq(pair.as_bytes(), &given))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let length_differs = a.len() != b.len();
    let mut difference = 0u8;
    for (i, byte) in b.iter().enumerate() {
        difference |= a.get(i).copied().unwrap_or(0) ^ byte;
    }
    !length_differs && difference == 0
}

fn with_cors(mut response: Response, origin: Option<&str>, preflight: bool) -> Response {
    let Some(origin) = origin.and_then(|o| HeaderValue::from_str(o).ok()) else { return response };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    if preflight {
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, DELETE, OPTIONS"));
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type"));
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    response
}

fn refuse(status: StatusCode, detail: String) -> Response {
    let kind = if status == StatusCode::UNAUTHORIZED { "Unauthorized" } else { "Forbidden" };
    let body = sdrt_api_types::ErrorResponse::new(kind, &detail);
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse_like_a1111_and_compare_in_full() {
        assert_eq!(AccessPolicy::parse_credentials("a:b, c:d").expect("two pairs"), ["a:b", "c:d"]);
        assert!(AccessPolicy::parse_credentials("nocolon").is_err());
        assert!(constant_time_eq(b"a:b", b"a:b"));
        assert!(
            !constant_time_eq(b"a:b", b"a:bc")
                && !constant_time_eq(b"a:bc", b"a:b")
                && !constant_time_eq(b"a:b", b"a:c")
        );
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        let host = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(value).expect("header"));
            host_is_loopback(&headers)
        };
        assert!(host("localhost:7860") && host("127.0.0.1:7860") && host("[::1]:7860") && host("127.0.0.2"));
        assert!(!host("evil.example:7860") && !host("localhost.evil.example"));
    }
}
