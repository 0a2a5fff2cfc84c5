//! Identifier newtypes and the validation of names coming from clients.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// One connection to the server. Chosen by the driver, unique while the connection lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// A room's message sequence number: strictly increasing per room, assigned by the server.
/// It is the one cursor for history pages, resume and acks.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The seq after this one.
    #[must_use]
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A client's own id for a message it sends, making the send idempotent: a resend with
/// the same id is acked with the original seq instead of posted again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientMsgId(Arc<str>);

impl ClientMsgId {
    /// The id as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ClientMsgId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ClientMsgId {
    fn from(s: &str) -> ClientMsgId {
        ClientMsgId(s.into())
    }
}

impl From<String> for ClientMsgId {
    fn from(s: String) -> ClientMsgId {
        ClientMsgId(s.into())
    }
}

impl fmt::Display for ClientMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request id chosen by the client; echoed in the reply or error for that request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

impl RequestId {
    /// The id after this one, for clients numbering their requests.
    #[must_use]
    pub fn next(self) -> RequestId {
        RequestId(self.0.wrapping_add(1))
    }
}

impl From<u64> for RequestId {
    fn from(n: u64) -> RequestId {
        RequestId(n)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a name or room name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Nothing left after normalization.
    #[error("must not be empty")]
    Empty,
    /// Longer than the limit, counted in Unicode scalar values after NFC normalization.
    #[error("must be at most {max} characters")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// A character that is not allowed (control, invisible, whitespace or reserved).
    #[error("must not contain {0:?}")]
    BadChar(char),
    /// Room names starting with `@` are direct-message rooms; this one is malformed or
    /// the caller is not one of its two users.
    #[error("is not a valid direct-message room (expected @user1,user2)")]
    BadDirect,
}

/// A validated user name: NFC-normalized, 1–`max` characters, no whitespace, control,
/// invisible or reserved (`@`, `,`) characters. Compared case-insensitively via [`UserName::key`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserName(Arc<str>);

/// The case-folded form of a [`UserName`], used for uniqueness and lookups.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserKey(Arc<str>);

impl UserName {
    /// Validates and normalizes a name typed by a user.
    pub fn parse(raw: &str, max_chars: usize) -> Result<UserName, NameError> {
        let name = normalize(raw, max_chars, false)?;
        Ok(UserName(name.into()))
    }

    /// The name as displayed.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-insensitive key of this name.
    #[must_use]
    pub fn key(&self) -> UserKey {
        UserKey(fold(&self.0).into())
    }
}

impl UserKey {
    /// The key of a name as a client wrote it (case-folded, as [`UserName::key`]),
    /// whether or not it is a valid name: for finding a place in the member list.
    #[must_use]
    pub fn of(raw: &str) -> UserKey {
        UserKey(fold(raw).into())
    }

    /// The key as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key shown as a name, for a user the server no longer knows (a direct-room
    /// peer who left). Keys are folds of valid names ([`UserName::key`], or the two
    /// halves of a validated direct room name), so the key is a valid name too.
    pub(crate) fn as_name(&self) -> UserName {
        UserName(self.0.clone())
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated room name. Public rooms are NFC-normalized and lowercased, 1–`max`
/// characters, without whitespace, control, invisible or reserved characters, and do not
/// start with `@`. Direct-message rooms are `@a,b` with the two users' keys in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoomName(Arc<str>);

impl RoomName {
    /// Validates and normalizes a room name (public or `@a,b` direct).
    pub fn parse(
        raw: &str,
        max_chars: usize,
        max_name_chars: usize,
    ) -> Result<RoomName, NameError> {
        // The common case, on every command: a name already in its key form (lowercase
        // ASCII letters, digits, `-`, `_`, `.`; nothing to trim). The full path below
        // gives the same name for it; this one skips its trims, checks and copies.
        if !raw.is_empty()
            && raw.len() <= max_chars
            && raw
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.'))
        {
            return Ok(RoomName(raw.into()));
        }
        let trimmed = raw.trim();
        if let Some(pair) = trimmed.strip_prefix('@') {
            let (a, b) = pair.split_once(',').ok_or(NameError::BadDirect)?;
            let a = UserName::parse(a, max_name_chars).map_err(|_| NameError::BadDirect)?;
            let b = UserName::parse(b, max_name_chars).map_err(|_| NameError::BadDirect)?;
            return Ok(RoomName::direct(&a.key(), &b.key()));
        }
        let name = normalize(trimmed, max_chars, true)?;
        Ok(RoomName(fold(&name).into()))
    }

    /// The room `raw` names, by the rule of [`RoomName::parse`] without its length limits:
    /// for matching what a user typed (`"#Café"` less the `#`, `"CAFE\u{301}"`,
    /// `"@Bob,alice"`) against the rooms the server named. `None` when no room can have
    /// that name.
    #[must_use]
    pub fn key_of(raw: &str) -> Option<RoomName> {
        RoomName::parse(raw, usize::MAX, usize::MAX).ok()
    }

    /// The direct-message room of two users (order does not matter).
    #[must_use]
    pub fn direct(a: &UserKey, b: &UserKey) -> RoomName {
        let (x, y) = if a <= b { (a, b) } else { (b, a) };
        RoomName(format!("@{},{}", x.as_str(), y.as_str()).into())
    }

    /// The two users of a direct-message room, or `None` for a public room.
    #[must_use]
    pub fn direct_users(&self) -> Option<(UserKey, UserKey)> {
        let pair = self.0.strip_prefix('@')?;
        let (a, b) = pair.split_once(',')?;
        Some((UserKey(a.into()), UserKey(b.into())))
    }

    /// The name as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The case-insensitive key of a user or room name: trimmed, NFC-normalized, lowercased
/// (full Unicode lowercase, no locale), then NFC again. Two names are the same user, or the
/// same public room, exactly when their keys are equal: [`UserName::key`] and the name of
/// a public [`RoomName`] are this of the validated name. Clients use it to compare what a
/// user typed with names the server sent, so that they agree with the server on every
/// name, ASCII or not (`"ÉCOLE"`, `"E\u{301}cole"` and `"école"` are one key;
/// `"STRASSE"` and `"straße"`, `"ıstanbul"` and `"istanbul"`, fullwidth and ASCII
/// letters are not). Total: it does not validate (see [`UserName::parse`]).
#[must_use]
pub fn fold(raw: &str) -> String {
    let s = raw.trim();
    // ASCII is already NFC and lowercases to ASCII: the common case, on every command.
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    // Lowercasing can denormalize (e.g. U+0130), so renormalize after folding.
    s.nfc().collect::<String>().to_lowercase().nfc().collect()
}

fn normalize(raw: &str, max_chars: usize, is_room: bool) -> Result<String, NameError> {
    let trimmed = raw.trim();
    let name: String = if trimmed.is_ascii() {
        trimmed.to_owned() // NFC leaves ASCII unchanged
    } else {
        trimmed.nfc().collect()
    };
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(bad) = name.chars().find(|&c| !allowed(c)) {
        return Err(NameError::BadChar(bad));
    }
    if is_room && name.starts_with('@') {
        return Err(NameError::BadChar('@'));
    }
    if name.chars().count() > max_chars {
        return Err(NameError::TooLong { max: max_chars });
    }
    Ok(name)
}

/// Whether a character may appear in a user or room name.
fn allowed(c: char) -> bool {
    !(c.is_control() || c.is_whitespace() || c == '@' || c == ',' || is_invisible(c))
}

/// Format and invisible characters that would let a name hide or reorder text:
/// zero-width characters, bidi controls, fillers, tags and similar.
#[must_use]
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{2800}' | '\u{3164}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFFB}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_and_case_folded() {
        let a = UserName::parse("  Ale\u{0301}x ", 32).unwrap();
        assert_eq!(a.as_str(), "Al\u{00E9}x");
        assert_eq!(a.key(), UserName::parse("ALÉX", 32).unwrap().key());
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        assert_eq!(UserName::parse("   ", 32), Err(NameError::Empty));
        assert_eq!(
            UserName::parse("a\u{202E}b", 32),
            Err(NameError::BadChar('\u{202E}'))
        );
        assert_eq!(UserName::parse("a b", 32), Err(NameError::BadChar(' ')));
        assert_eq!(
            UserName::parse("a\u{7}", 32),
            Err(NameError::BadChar('\u{7}'))
        );
        assert_eq!(
            UserName::parse(&"x".repeat(33), 32),
            Err(NameError::TooLong { max: 32 })
        );
        assert!(UserName::parse(&"é".repeat(32), 32).is_ok());
    }

    proptest::proptest! {
        /// A name in key form takes the short path; with a space before it (trimmed
        /// away) it takes the full one. Both give the same room, or the same error.
        #[test]
        fn the_short_path_names_rooms_as_the_full_one_does(
            name in "[a-z0-9._-]{1,40}|[a-zA-Z0-9 ._@,-]{0,12}",
            max in 1usize..48,
        ) {
            proptest::prop_assert_eq!(
                RoomName::parse(&name, max, 32),
                RoomName::parse(&format!(" {name}"), max, 32)
            );
        }
    }

    #[test]
    fn rooms_are_lowercased_and_direct_rooms_are_canonical() {
        assert_eq!(
            RoomName::parse("General", 64, 32).unwrap().as_str(),
            "general"
        );
        let d = RoomName::parse("@Bob,alice", 64, 32).unwrap();
        assert_eq!(d.as_str(), "@alice,bob");
        assert!(d.direct_users().is_some());
        assert!(RoomName::parse("@nobody", 64, 32).is_err());
        assert!(
            RoomName::parse("general", 64, 32)
                .unwrap()
                .direct_users()
                .is_none()
        );
    }
}
