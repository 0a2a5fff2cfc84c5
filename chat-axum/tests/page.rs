//! The browser page carries the server's limits (the core `Config`'s), so the login form
//! checks names against the same numbers the server enforces: the page has none of its own.

mod common;

use chat_axum::RouterOptions;
use chat_core::protocol::Limits;
use chat_core::runtime::HubConfig;
use common::TestServer;

/// A plain HTTP GET: (head, body).
async fn get(server: &TestServer, path: &str) -> (String, String) {
    let out = common::http_get(server, path).await;
    let (head, body) = out.split_once("\r\n\r\n").expect("a head and a body");
    (head.to_owned(), body.to_owned())
}

fn page_limits(html: &str) -> Limits {
    let start = html
        .find(r#"<meta name="chat-limits" content=""#)
        .expect("the limits meta tag")
        + r#"<meta name="chat-limits" content=""#.len();
    let end = start + html[start..].find('"').expect("attribute ends");
    let json = html[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&json).expect("the attribute is the limits as JSON")
}

#[tokio::test]
async fn the_page_carries_the_limits_of_the_servers_config() {
    let mut config = HubConfig::default();
    config.core.max_name_chars = 8;
    config.core.max_room_chars = 12;
    config.core.max_body_bytes = 100;
    config.core.send_rate = chat_core::Rate {
        burst: 3,
        per_second: 2,
    };
    let server = TestServer::with(config, RouterOptions::default()).await;
    let (head, html) = get(&server, "/").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let limits = page_limits(&html);
    assert_eq!(&limits, server.hub.limits());
    assert_eq!(
        (
            limits.max_name_chars,
            limits.max_room_chars,
            limits.max_body_bytes,
            limits.send_burst
        ),
        (8, 12, 100, 3)
    );
    server.stop().await.expect("stops");
}

#[tokio::test]
async fn the_name_rules_module_is_served_like_the_page_script() {
    let server = TestServer::start().await;
    let (head, js) = get(&server, "/names.js").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(js.contains("export function parseUserName"), "{js}");
    server.stop().await.expect("stops");
}
