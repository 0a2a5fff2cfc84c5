//! Remembers the token each server gave each name, like a browser keeps a cookie.
//!
//! The server keeps a name reserved for a few seconds after its last connection closes
//! (so a reconnect or a page refresh does not lose it), and only a `hello` with the
//! name's token may take it meanwhile. Without the token, `chat-cli send` twice in a row
//! with the same `--name` would be refused the second time. So the token from each
//! `welcome` is stored under `$XDG_STATE_HOME/chat-cli/tokens/` (default
//! `~/.local/state/chat-cli/tokens/`), one file (mode 0600) per server URL and name,
//! and sent by later runs with the same URL and name. `--token` overrides it. Read and
//! write failures are ignored: the cache is a convenience. One file per key means
//! concurrent runs never lose each other's updates.

use std::path::PathBuf;

/// The token directory.
#[derive(Debug, Clone)]
pub struct TokenCache {
    dir: PathBuf,
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

    /// A cache in this directory.
    #[must_use]
    pub fn at(dir: PathBuf) -> TokenCache {
        TokenCache { dir }
    }

    /// The token stored for this server and name.
    #[must_use]
    pub fn get(&self, url: &str, name: &str) -> Option<String> {
        let (file, header) = self.entry(url, name);
        let text = std::fs::read_to_string(file).ok()?;
        let token = text.strip_prefix(&header)?.trim_end();
        (!token.is_empty()).then(|| token.to_owned())
    }

    /// Stores (or replaces) the token for this server and name.
    pub fn put(&self, url: &str, name: &str, token: &str) {
        if token.contains(['\n', '\r']) || self.get(url, name).as_deref() == Some(token) {
            return;
        }
        let (file, header) = self.entry(url, name);
        let _ = self.write(&file, &format!("{header}{token}\n"));
    }

    /// The file of a key, and the header (URL and name) that proves it is that key's.
    fn entry(&self, url: &str, name: &str) -> (PathBuf, String) {
        let key = chat_core::fold(name).replace(['\t', '\n', '\r'], " ");
        let header = format!("{url}\t{key}\t");
        // FNV-1a: stable across runs and platforms, unlike the std hasher.
        let hash = header.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (self.dir.join(format!("{hash:016x}")), header)
    }

    fn write(&self, file: &std::path::Path, text: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp)?;
            std::io::Write::write_all(&mut f, text.as_bytes())?;
        }
        std::fs::rename(&tmp, file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_replaces_per_url_and_name() {
        let dir = std::env::temp_dir().join(format!("chat-cli-tokens-{}", std::process::id()));
        let cache = TokenCache::at(dir.join("sub"));
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

    #[test]
    fn a_name_is_one_key_however_the_server_would_take_it() {
        // The server's rule (chat_core::fold): NFD and NFC accents, any case.
        let dir = std::env::temp_dir().join(format!("chat-cli-tokens-nfc-{}", std::process::id()));
        let cache = TokenCache::at(dir.clone());
        cache.put("ws://a/ws", "Ale\u{301}x", "t1");
        assert_eq!(cache.get("ws://a/ws", "AL\u{c9}X").as_deref(), Some("t1"));
        assert_eq!(cache.get("ws://a/ws", " al\u{e9}x ").as_deref(), Some("t1"));
        // Different names to the server are different keys.
        cache.put("ws://a/ws", "STRASSE", "t2");
        assert_eq!(cache.get("ws://a/ws", "stra\u{df}e"), None);
        assert_eq!(
            cache.get(
                "ws://a/ws",
                "\u{ff33}\u{ff34}\u{ff32}\u{ff21}\u{ff33}\u{ff33}\u{ff25}"
            ),
            None
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
