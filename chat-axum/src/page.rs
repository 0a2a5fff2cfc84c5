//! The browser chat page, served from the binary with strict security headers.

use std::sync::Arc;

use axum::Router;
use axum::extract::OriginalUri;
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use chat_core::protocol::Limits;

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/chat.js");
const NAMES: &str = include_str!("../assets/names.js");
const STYLE: &str = include_str!("../assets/style.css");

/// No inline script or style, no framing, connections only to this origin's WebSocket.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Where the page takes the server's limits from before its first `welcome` (the login
/// form checks names against them).
const LIMITS_META: &str = r#"<meta name="chat-limits" content="">"#;

/// The page's routes. `limits` are the server's (the core `Config`'s): the page carries
/// them, so it has no limits of its own.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(
    limits: &Limits,
    host_identity: bool,
) -> Router<S> {
    let mut index = index_with(limits);
    if host_identity {
        // The page asks no name: the app's identity hook says who the user is.
        index = index.replacen(
            "<title>",
            "<meta name=\"chat-host-identity\" content=\"\">\n<title>",
            1,
        );
    }
    let index: Arc<str> = index.into();
    Router::new()
        .route(
            "/",
            get(move |OriginalUri(uri): OriginalUri| {
                let index = index.clone();
                async move { asset(with_base(&index, &uri), "text/html; charset=utf-8") }
            }),
        )
        .route(
            "/chat.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/names.js",
            get(|| async { asset(NAMES, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/style.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}

/// The page with its script and style at absolute paths under the mount point, so it
/// works whether it was asked for as `/chat/` or `/chat` (from which relative paths would
/// leave the mount: `/chat.js`). The script finds the WebSocket next to itself.
fn with_base(index: &str, uri: &Uri) -> String {
    let path = uri.path();
    let base = if path.ends_with('/') {
        path.to_owned()
    } else {
        format!("{path}/")
    };
    let base = base.replace('&', "&amp;").replace('"', "&quot;");
    index
        .replace(r#"href="style.css""#, &format!(r#"href="{base}style.css""#))
        .replace(r#"src="chat.js""#, &format!(r#"src="{base}chat.js""#))
}

/// Mounts the chat at `prefix` (`"/chat"`), so that both `/chat` and `/chat/` open the
/// page: `/chat` redirects to `/chat/` (query kept), under which every chat route lives
/// (`/chat/ws`, `/chat/healthz`, ...). Merge the result into the app's router. (axum's own
/// `nest("/chat", ..)` serves `/chat` but not `/chat/`.)
///
/// # Panics
/// If `prefix` does not start with `/`, or ends with one.
pub fn mount(prefix: &str, chat: Router) -> Router {
    assert!(
        prefix.starts_with('/') && !prefix.ends_with('/'),
        "a mount prefix looks like /chat"
    );
    let slashed = format!("{prefix}/");
    let to = slashed.clone();
    Router::new().nest(&slashed, chat).route(
        prefix,
        get(move |OriginalUri(uri): OriginalUri| {
            let to = match uri.query() {
                Some(q) => format!("{to}?{q}"),
                None => to.clone(),
            };
            async move { Redirect::permanent(&to) }
        }),
    )
}

fn index_with(limits: &Limits) -> String {
    let json = serde_json::to_string(limits).expect("limits serialize");
    let attribute = json
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(
        INDEX.contains(LIMITS_META),
        "index.html has the limits meta tag"
    );
    INDEX.replace(
        LIMITS_META,
        &format!(r#"<meta name="chat-limits" content="{attribute}">"#),
    )
}

fn asset(body: impl IntoResponse, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
