//! The Origin check made before a WebSocket upgrade (against cross-site WebSocket hijacking).

use axum::http::{HeaderMap, header};

/// Which web origins may open a chat WebSocket.
///
/// Browsers always send `Origin` on WebSocket requests, so a request without one is
/// not from a web page (a CLI, a bot, a test) and cannot be a cross-site hijack: it is
/// allowed under every policy. `Origin: null` (sandboxed frames, `file:` pages) is
/// refused unless the policy is [`OriginPolicy::Any`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OriginPolicy {
    /// Only pages served by this server: `Origin` must be `http://` + the `Host` header
    /// (`https://` when a proxy says `X-Forwarded-Proto: https`).
    #[default]
    SameOrigin,
    /// Same origin, plus these exact origins (`scheme://host[:port]`).
    AllowList(Vec<String>),
    /// Every origin. Only when set explicitly; a warning is logged.
    Any,
}

impl OriginPolicy {
    /// Builds a policy from command-line values: none → same origin; `*` → any;
    /// otherwise an allow-list.
    #[must_use]
    pub fn from_list(values: &[String]) -> OriginPolicy {
        let values: Vec<String> = values
            .iter()
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|v| !v.is_empty())
            .collect();
        if values.iter().any(|v| v == "*") {
            OriginPolicy::Any
        } else if values.is_empty() {
            OriginPolicy::SameOrigin
        } else {
            OriginPolicy::AllowList(values)
        }
    }

    /// Ok when the request may upgrade; otherwise the refused origin.
    ///
    /// Several `Origin` headers are refused under every policy: a browser sends one, and
    /// a check that read only the first would let a page add a second.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        let mut all = headers.get_all(header::ORIGIN).iter();
        let Some(origin) = all.next() else {
            return Ok(());
        };
        if all.next().is_some() {
            return Err("<several Origin headers>".into());
        }
        let Ok(origin) = origin.to_str() else {
            return Err("<not ASCII>".into());
        };
        let origin = origin.trim().to_ascii_lowercase();
        if *self == OriginPolicy::Any {
            return Ok(());
        }
        if origin != "null" && same_origin(&origin, headers) {
            return Ok(());
        }
        match self {
            OriginPolicy::AllowList(list) if list.contains(&origin) => Ok(()),
            _ => Err(origin),
        }
    }
}

fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let scheme = if https { "https" } else { "http" };
    origin == format!("{scheme}://{}", host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_origin_matrix() {
        let p = OriginPolicy::SameOrigin;
        let host = "127.0.0.1:5000";
        assert!(
            p.check(&headers(host, Some("http://127.0.0.1:5000")))
                .is_ok()
        );
        assert!(
            p.check(&headers(host, None)).is_ok(),
            "non-browser clients send no Origin"
        );
        for bad in [
            "null",
            "http://127.0.0.1:5001",
            "https://127.0.0.1:5000",
            "http://127.0.0.1:5000.evil.com",
            "http://evil127.0.0.1:5000",
            "http://localhost:5000",
            "ws://127.0.0.1:5000",
        ] {
            assert!(
                p.check(&headers(host, Some(bad))).is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn allow_list_and_any() {
        let p = OriginPolicy::from_list(&["https://app.example.com/".into()]);
        let host = "chat.example.com";
        assert!(
            p.check(&headers(host, Some("https://app.example.com")))
                .is_ok()
        );
        assert!(
            p.check(&headers(host, Some("https://app.example.com.evil.io")))
                .is_err()
        );
        assert!(p.check(&headers(host, Some("null"))).is_err());
        let any = OriginPolicy::from_list(&["*".into()]);
        assert!(any.check(&headers(host, Some("null"))).is_ok());
        assert_eq!(OriginPolicy::from_list(&[]), OriginPolicy::SameOrigin);
    }

    #[test]
    fn two_origin_headers_are_refused_whatever_the_first() {
        let host = "127.0.0.1:5000";
        for policy in [
            OriginPolicy::SameOrigin,
            OriginPolicy::from_list(&["https://evil.example".into()]),
            OriginPolicy::Any,
        ] {
            let mut h = headers(host, Some("http://127.0.0.1:5000"));
            h.append(header::ORIGIN, "https://evil.example".parse().unwrap());
            assert!(policy.check(&h).is_err(), "{policy:?}");
        }
    }
}
