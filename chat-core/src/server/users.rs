//! Users: a name (or host identity) with its sessions, its anonymous-mode token and the
//! grace period that holds the name after the last session goes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::ids::{SessionId, UserKey, UserName};

/// A user known to the server: online, or in its grace period.
#[derive(Debug)]
pub(crate) struct User {
    pub name: UserName,
    pub sessions: BTreeSet<SessionId>,
    /// Anonymous mode: proves a later session is the same user.
    pub token: Option<String>,
    /// Set when the last session went away: the name stays held until then.
    pub grace_until: Option<Instant>,
    /// When the name was taken: in anonymous mode the user reads direct messages from
    /// then on only, none of an earlier holder's of the name.
    pub claimed_at: DateTime<Utc>,
}

/// Every known user, by key, and the counter that makes each anonymous claim's token new.
#[derive(Debug, Default)]
pub(crate) struct Users {
    by_key: BTreeMap<UserKey, User>,
    /// The first user known under each look-alike skeleton ([`lookalike`]).
    by_skeleton: BTreeMap<String, UserKey>,
    claims: u64,
    /// Mixed into tokens: the server's node id in cluster mode, 0 on a single server.
    salt: u64,
}

/// What a name looks like, for telling impersonations apart from new names: the UTS #39
/// confusable skeleton (Cyrillic `а` and fullwidth `ａ` become `a`, `rn` and `m` meet) of
/// the name's key, lowercased again since the skeleton maps some letters to capitals
/// (`0` to `O`): case is no disguise (`B0B`, `bob`).
pub(crate) fn lookalike(name: &UserName) -> String {
    unicode_security::skeleton(name.key().as_str())
        .collect::<String>()
        .to_lowercase()
}

impl Users {
    /// No users; tokens salted with `salt` (see [`Users::mint`]).
    pub fn new(salt: u64) -> Users {
        Users {
            salt,
            ..Users::default()
        }
    }

    pub fn get(&self, key: &UserKey) -> Option<&User> {
        self.by_key.get(key)
    }

    pub fn get_mut(&mut self, key: &UserKey) -> Option<&mut User> {
        self.by_key.get_mut(key)
    }

    pub fn contains(&self, key: &UserKey) -> bool {
        self.by_key.contains_key(key)
    }

    pub fn remove(&mut self, key: &UserKey) {
        if let Some(user) = self.by_key.remove(key) {
            let skeleton = lookalike(&user.name);
            if self.by_skeleton.get(&skeleton) == Some(key) {
                self.by_skeleton.remove(&skeleton);
            }
        }
    }

    /// A known user (online or holding its name) whose name looks like `name` but is
    /// another user's.
    pub fn lookalike_of(&self, name: &UserName) -> Option<&User> {
        let key = self.by_skeleton.get(&lookalike(name))?;
        if *key == name.key() {
            return None;
        }
        self.by_key.get(key)
    }

    /// The user for `name`, created if new (with a fresh token in anonymous mode).
    pub fn claim(
        &mut self,
        name: &UserName,
        anonymous: bool,
        secret: &[u8; 32],
        now: DateTime<Utc>,
    ) -> &mut User {
        let token = (anonymous && !self.by_key.contains_key(&name.key()))
            .then(|| self.mint(&name.key(), secret));
        self.claim_with(name, token, now)
    }

    /// The user for `name`, created with `token` if new.
    pub fn claim_with(
        &mut self,
        name: &UserName,
        token: Option<String>,
        now: DateTime<Utc>,
    ) -> &mut User {
        let by_skeleton = &mut self.by_skeleton;
        self.by_key.entry(name.key()).or_insert_with_key(|key| {
            by_skeleton
                .entry(lookalike(name))
                .or_insert_with(|| key.clone());
            User {
                name: name.clone(),
                sessions: BTreeSet::new(),
                token,
                grace_until: None,
                // At the millisecond, as messages are stamped (`Room::stamp`).
                claimed_at: DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now),
            }
        })
    }

    /// A new anonymous-mode token for the name with this key: a keyed hash of a claim
    /// counter, the salt and the name, so a name freed and taken again (here, or on
    /// another server of a cluster) gets a different token.
    pub fn mint(&mut self, key: &UserKey, secret: &[u8; 32]) -> String {
        self.claims += 1;
        let mut input = Vec::with_capacity(key.as_str().len() + 16);
        input.extend_from_slice(&self.claims.to_le_bytes());
        if self.salt != 0 {
            input.extend_from_slice(&self.salt.to_le_bytes());
        }
        input.extend_from_slice(key.as_str().as_bytes());
        let hash = blake3::keyed_hash(secret, &input);
        hash.to_hex()[..32].to_owned()
    }

    /// The oldest direct message `key` may read: in anonymous mode (the user holds a
    /// token) nothing from before it took its name, which an earlier holder may have
    /// used; a host identity reads all.
    pub fn direct_floor(&self, key: &UserKey) -> Option<DateTime<Utc>> {
        self.by_key
            .get(key)
            .filter(|u| u.token.is_some())
            .map(|u| u.claimed_at)
    }

    /// A user's display name; for a user no longer known (a direct-room peer who left),
    /// the key itself, which is always a valid name.
    pub fn display_name(&self, key: &UserKey) -> UserName {
        match self.by_key.get(key) {
            Some(u) => u.name.clone(),
            None => key.as_name(),
        }
    }
}
