//! The host's identity hook: who a WebSocket connection is, decided from its upgrade
//! request (a session cookie, an `Authorization` header, a query-string ticket, the
//! peer address) before the upgrade. A refusal is an HTTP 401 or 403: no socket opens.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chat_core::Identity;

/// What the identity hook sees of an upgrade request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectRequest {
    /// The request's headers (cookies included).
    pub headers: HeaderMap,
    /// The request's URI as the client sent it (before any `nest` prefix was taken
    /// off), query included.
    pub uri: Uri,
    /// The TCP peer's address, when the server passed it on ([`crate::serve`] does;
    /// with `axum::serve`, use `into_make_service_with_connect_info`).
    pub peer: Option<SocketAddr>,
}

impl ConnectRequest {
    /// The value of the cookie `name`, from the `Cookie` headers (the first if sent
    /// twice).
    #[must_use]
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// The value of the query parameter `name`, as sent (not percent-decoded).
    #[must_use]
    pub fn query(&self, name: &str) -> Option<&str> {
        self.uri
            .query()?
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// The hook's refusal of a connection, answered before the upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectRefused {
    /// No credentials, or not valid ones: HTTP 401.
    Unauthorized(String),
    /// Valid credentials of a user who may not chat: HTTP 403.
    Forbidden(String),
}

impl ConnectRefused {
    /// The HTTP status it is answered with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            ConnectRefused::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ConnectRefused::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The `chat_refusals_total` reason.
    pub(crate) fn metric(&self) -> &'static str {
        match self {
            ConnectRefused::Unauthorized(_) => "unauthorized",
            ConnectRefused::Forbidden(_) => "forbidden",
        }
    }
}

impl IntoResponse for ConnectRefused {
    fn into_response(self) -> Response {
        let status = self.status();
        let (ConnectRefused::Unauthorized(why) | ConnectRefused::Forbidden(why)) = self;
        (status, format!("{why}\n")).into_response()
    }
}

/// The identity hook's future.
pub type IdentityFuture = Pin<Box<dyn Future<Output = Result<Identity, ConnectRefused>> + Send>>;

/// The host's identity hook ([`RouterOptions::identity`](crate::RouterOptions::identity)):
/// given the upgrade request, the connection's user or a refusal. Build one with
/// [`identity_hook`].
pub type IdentityHook = Arc<dyn Fn(ConnectRequest) -> IdentityFuture + Send + Sync>;

/// Makes an [`IdentityHook`] of an async function or closure.
pub fn identity_hook<F, Fut>(f: F) -> IdentityHook
where
    F: Fn(ConnectRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Identity, ConnectRefused>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}
