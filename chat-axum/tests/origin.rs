//! The Origin check, through real HTTP upgrade requests: a refused origin gets 403 before
//! the upgrade and creates no session.

mod common;

use axum::http::StatusCode;
use chat_axum::{OriginPolicy, RouterOptions};
use chat_core::SessionId;
use chat_core::runtime::HubConfig;
use common::{Client, TestServer, upgrade};

/// Upgrades with these headers must all be refused with 403, with no session and no
/// connection task added.
async fn assert_refused(server: &TestServer, cases: &[Vec<(&str, String)>]) {
    let connections = || server.hub.stats().connections;
    let (before, tasks) = (connections(), server.tracker.len());
    for headers in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, ws) = upgrade(&server.url(), &headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?} must be refused");
        assert!(ws.is_none());
    }
    assert_eq!(connections(), before, "refused upgrades create no session");
    assert_eq!(
        server.tracker.len(),
        tasks,
        "refused upgrades start no task"
    );
}

/// An upgrade with these headers must succeed; returns the client after hello.
async fn assert_allowed(server: &TestServer, headers: &[(&str, String)], name: &str) -> Client {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, ws) = upgrade(&server.url(), &headers).await;
    assert_eq!(
        status,
        StatusCode::SWITCHING_PROTOCOLS,
        "{headers:?} must be allowed"
    );
    let mut c = Client::from_ws(ws.expect("upgraded"));
    c.hello(name).await;
    c
}

fn origin(value: impl Into<String>) -> Vec<(&'static str, String)> {
    vec![("Origin", value.into())]
}

/// Refused requests leave no trace: the first session ever created gets id 1, the hub
/// counts exactly the allowed connections, and no connection task was started for them.
async fn assert_no_side_effects(server: &TestServer, first: &Client, allowed: u64) {
    assert_eq!(
        first.session(),
        SessionId(1),
        "refused upgrades must not create sessions"
    );
    assert_eq!(server.hub.stats().connections, allowed);
    assert_eq!(server.tracker.len(), allowed as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_origin_policy_matrix() {
    let server = TestServer::start().await;
    let host = server.addr.to_string();
    let port = server.addr.port();
    let other_port = if port == 65535 { 1 } else { port + 1 };
    assert_refused(
        &server,
        &[
            origin("null"),
            // Look-alike hosts.
            origin(format!("http://{host}.evil.example")),
            origin(format!("http://evil{host}")),
            origin(format!("http://127.0.0.1.evil.example:{port}")),
            origin(format!("http://localhost:{port}")),
            origin("http://127.0.0.1"),
            // Wrong port.
            origin(format!("http://127.0.0.1:{other_port}")),
            // Wrong scheme.
            origin(format!("https://{host}")),
            origin(format!("ws://{host}")),
            origin(format!("file://{host}")),
            // Not a serialized origin at all.
            origin(format!("http://{host}/")),
            origin(format!("http://user@{host}")),
            origin(""),
            // Two Origin headers are ambiguous, even when the first one matches.
            vec![
                ("Origin", format!("http://{host}")),
                ("Origin", "https://evil.example".into()),
            ],
            vec![
                ("Origin", format!("http://{host}")),
                ("Origin", format!("http://{host}")),
            ],
        ],
    )
    .await;

    // Same origin, in any case: allowed.
    let first = assert_allowed(&server, &origin(format!("http://{host}")), "alice").await;
    assert_no_side_effects(&server, &first, 1).await;
    let upper = assert_allowed(&server, &origin(format!("HTTP://{host}")), "bob").await;
    // No Origin at all: not a browser (CLI, bot), so no cross-site hijack: allowed.
    let none = assert_allowed(&server, &[], "carol").await;
    // Behind a TLS-terminating proxy the page is https.
    let proxied = assert_allowed(
        &server,
        &[
            ("Origin", format!("https://{host}")),
            ("X-Forwarded-Proto", "https".into()),
        ],
        "dave",
    )
    .await;
    // ... but the proxy header does not make a plain-http origin acceptable any more.
    assert_refused(
        &server,
        &[vec![
            ("Origin", format!("http://{host}")),
            ("X-Forwarded-Proto", "https".into()),
        ]],
    )
    .await;
    server.stop_with(vec![first, upper, none, proxied]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_adds_exact_origins_only() {
    let options = RouterOptions {
        origins: OriginPolicy::from_list(&[
            "https://app.example.com".into(),
            "http://localhost:3000/".into(),
        ]),
        ..RouterOptions::default()
    };
    let server = TestServer::with(HubConfig::default(), options).await;
    let host = server.addr.to_string();
    assert_refused(
        &server,
        &[
            origin("null"),
            origin("https://app.example.com.evil.io"),
            origin("https://evil-app.example.com"),
            origin("http://app.example.com"),
            origin("https://app.example.com:8443"),
            origin("http://localhost:3001"),
            origin("https://localhost:3000"),
            origin("https://example.com"),
        ],
    )
    .await;
    let listed = assert_allowed(&server, &origin("https://app.example.com"), "alice").await;
    assert_no_side_effects(&server, &listed, 1).await;
    let listed2 = assert_allowed(&server, &origin("http://localhost:3000"), "bob").await;
    // The server's own pages stay allowed.
    let own = assert_allowed(&server, &origin(format!("http://{host}")), "carol").await;
    let none = assert_allowed(&server, &[], "dave").await;
    server.stop_with(vec![listed, listed2, own, none]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_allows_every_origin() {
    let options = RouterOptions {
        origins: OriginPolicy::from_list(&["*".into()]),
        ..RouterOptions::default()
    };
    assert_eq!(options.origins, OriginPolicy::Any);
    let server = TestServer::with(HubConfig::default(), options).await;
    let mut clients = Vec::new();
    for (i, o) in [
        "null",
        "https://evil.example",
        "http://127.0.0.1:1",
        "file://whatever",
    ]
    .into_iter()
    .enumerate()
    {
        clients.push(assert_allowed(&server, &origin(o), &format!("user{i}")).await);
    }
    server.stop_with(clients).await;
}
