//! Remembers the token each server gave each name, like a browser keeps a cookie.
//!
//! The server keeps a name reserved for a few seconds after its last connection closes
//! (so a reconnect or a page refresh does not lose it), and only a `hello` with the
//! name's token may take it meanwhile. Without the token, `chat-cli send` twice in a row
//! with the same `--name` would be refused the second time. So the token from each
//! `welcome` is stored in `$XDG_STATE_HOME/chat-cli/tokens` (default
//! `~/.local/state/chat-cli/tokens`, mode 0600), one `url<TAB>name<TAB>token` per line,
//! and sent by later runs with the same URL and name. `--token` overrides it. Read and
//! write failures are ignored: the cache is a convenience.

use std::path::PathBuf;

/// The token file.
#[derive(Debug, Clone)]
pub struct TokenCache {
    path: PathBuf,
}

impl TokenCache {
    /// The cache at its default place, if a home or state directory is known.
    #[must_use]
    pub fn default_location() -> Option<TokenCache> {
        let base = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|home| PathBuf::from(home).join(".local").join("state"))
            })?;
        Some(TokenCache::at(base.join("chat-cli").join("tokens")))
    }

    /// A cache in this file.
    #[must_use]
    pub fn at(path: PathBuf) -> TokenCache {
        TokenCache { path }
    }

    /// The token stored for this server and name.
    #[must_use]
    pub fn get(&self, url: &str, name: &str) -> Option<String> {
        let key = fold(name);
        let text = std::fs::read_to_string(&self.path).ok()?;
        text.lines().find_map(|line| {
            let mut parts = line.split('\t');
            let (u, n, t) = (parts.next()?, parts.next()?, parts.next()?);
            (u == url && n == key && !t.is_empty()).then(|| t.to_owned())
        })
    }

    /// Stores (or replaces) the token for this server and name.
    pub fn put(&self, url: &str, name: &str, token: &str) {
        if [url, token].iter().any(|s| s.contains(['\t', '\n', '\r'])) {
            return;
        }
        let key = fold(name);
        if self.get(url, name).as_deref() == Some(token) {
            return;
        }
        let old = std::fs::read_to_string(&self.path).unwrap_or_default();
        let mut lines: Vec<&str> = old
            .lines()
            .filter(|line| {
                let mut parts = line.split('\t');
                !(parts.next() == Some(url) && parts.next() == Some(key.as_str()))
            })
            .collect();
        let entry = format!("{url}\t{key}\t{token}");
        lines.push(&entry);
        let _ = self.write(&(lines.join("\n") + "\n"));
    }

    fn write(&self, text: &str) -> std::io::Result<()> {
        let dir = self.path.parent().ok_or(std::io::ErrorKind::NotFound)?;
        std::fs::create_dir_all(dir)?;
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp)?;
            std::io::Write::write_all(&mut file, text.as_bytes())?;
        }
        std::fs::rename(&tmp, &self.path)
    }
}

/// Names are unique case-insensitively; so are the cache keys.
fn fold(name: &str) -> String {
    name.trim().to_lowercase().replace(['\t', '\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_replaces_per_url_and_name() {
        let dir = std::env::temp_dir().join(format!("chat-cli-tokens-{}", std::process::id()));
        let cache = TokenCache::at(dir.join("sub").join("tokens"));
        assert_eq!(cache.get("ws://a/ws", "alice"), None);
        cache.put("ws://a/ws", "Alice", "t1");
        cache.put("ws://b/ws", "alice", "t2");
        assert_eq!(cache.get("ws://a/ws", "ALICE").as_deref(), Some("t1"));
        assert_eq!(cache.get("ws://b/ws", "alice").as_deref(), Some("t2"));
        cache.put("ws://a/ws", "alice", "t3");
        assert_eq!(cache.get("ws://a/ws", "alice").as_deref(), Some("t3"));
        assert_eq!(cache.get("ws://b/ws", "alice").as_deref(), Some("t2"));
        assert_eq!(cache.get("ws://a/ws", "bob"), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
