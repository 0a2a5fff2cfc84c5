//! A room's moderation state in Redis, the truth in cluster mode (docs/CLUSTER.md,
//! "Moderation state"): one hash per room, `chat:{R}:mod`, written by the server that
//! accepted a change before its moderator gets `done`, read by every server when it
//! loads the room and at each catch-up.
//!
//! Fields (`,` never appears in a name, and a holder is hex):
//!
//! | field | value |
//! |---|---|
//! | `role,<user key>,` | `<role>,<user>` |
//! | `ban,<user key>,<holder>` | `<end, ms since 1970, or empty: for good>,<user>` |
//! | `mute,<user key>,<holder>` | as `ban` |
//! | `topic` | the topic (empty: none) |
//! | `slow` | slow mode's seconds |
//!
//! `<holder>` is empty for a sanction that binds the name, else the hash of the
//! anonymous token it binds (docs/PROTOCOL.md). A ban or mute whose end has passed is
//! left in place (until it is given again or lifted): every server ends it by itself,
//! and a server that did not hold it skips it.

use chat_core::protocol::Role;
use chat_core::{ModerationChange, RoomName, UserName};
use chrono::{DateTime, Utc};

use crate::{Error, RedisLog};

impl RedisLog {
    /// Writes one change to `room`'s moderation state (one script: what it replaces is
    /// dropped and the new value set at once). Changes of kinds this crate does not
    /// know are not written.
    ///
    /// # Errors
    /// Redis errors (then the change may or may not have been written: writing it again
    /// is safe).
    pub async fn save_moderation(&mut self, change: &ModerationChange) -> Result<(), Error> {
        let Some((drop, field, value)) = encode(change) else {
            return Ok(());
        };
        let _: i64 = self
            .scripts
            .moderation
            .key(self.keys.moderation(change.room().as_str()))
            .arg(drop)
            .arg(field)
            .arg(value)
            .invoke_async(&mut self.conn)
            .await?;
        Ok(())
    }

    /// `room`'s moderation state, as changes to apply to an empty state: roles, bans
    /// and mutes (with their ends, ended ones too), topic, slow mode. Fields that do not
    /// parse (another program's) are skipped.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn read_moderation(
        &mut self,
        room: &RoomName,
    ) -> Result<Vec<ModerationChange>, Error> {
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.keys.moderation(room.as_str()))
            .query_async(&mut self.conn)
            .await?;
        Ok(fields
            .into_iter()
            .filter_map(|(f, v)| decode(room, &f, &v))
            .collect())
    }
}

/// A change as (prefix of the fields to drop, field to set, its value).
fn encode(change: &ModerationChange) -> Option<(String, String, String)> {
    let ends = |until: &Option<DateTime<Utc>>| {
        until.map_or_else(String::new, |u| u.timestamp_millis().to_string())
    };
    Some(match change {
        ModerationChange::Role { user, role, .. } => {
            let field = format!("role,{},", user.key().as_str());
            if *role == Role::Member {
                (field, String::new(), String::new())
            } else {
                (field.clone(), field, format!("{},{user}", role.as_str()))
            }
        }
        ModerationChange::Ban {
            user,
            until,
            holder,
            ..
        } => sanction("ban", user, ends(until), holder.as_deref()),
        ModerationChange::Mute {
            user,
            until,
            holder,
            ..
        } => sanction("mute", user, ends(until), holder.as_deref()),
        ModerationChange::Unban { user, .. } => {
            let drop = format!("ban,{},", user.key().as_str());
            (drop, String::new(), String::new())
        }
        ModerationChange::Unmute { user, .. } => {
            let drop = format!("mute,{},", user.key().as_str());
            (drop, String::new(), String::new())
        }
        ModerationChange::Topic { topic, .. } => (String::new(), "topic".into(), topic.clone()),
        ModerationChange::SlowMode { seconds, .. } => {
            (String::new(), "slow".into(), seconds.to_string())
        }
        _ => return None,
    })
}

fn sanction(
    kind: &str,
    user: &UserName,
    ends: String,
    holder: Option<&str>,
) -> (String, String, String) {
    let field = format!("{kind},{},{}", user.key().as_str(), holder.unwrap_or(""));
    (String::new(), field, format!("{ends},{user}"))
}

/// One field back as a change; `None` for a field that does not parse.
fn decode(room: &RoomName, field: &str, value: &str) -> Option<ModerationChange> {
    let room = room.clone();
    let name = |s: &str| {
        UserName::parse(s, usize::MAX)
            .ok()
            .filter(|u| u.as_str() == s)
    };
    match field {
        "topic" => {
            return Some(ModerationChange::Topic {
                room,
                topic: value.to_owned(),
            });
        }
        "slow" => {
            return Some(ModerationChange::SlowMode {
                room,
                seconds: value.parse().ok()?,
            });
        }
        _ => {}
    }
    let mut parts = field.splitn(3, ',');
    let (kind, key, holder) = (parts.next()?, parts.next()?, parts.next()?);
    let (first, user) = value.split_once(',')?;
    let user = name(user).filter(|u| u.key().as_str() == key)?;
    match kind {
        "role" => {
            let role = match first {
                "owner" => Role::Owner,
                "moderator" => Role::Moderator,
                _ => return None,
            };
            Some(ModerationChange::Role { room, user, role })
        }
        "ban" | "mute" => {
            let until = if first.is_empty() {
                None
            } else {
                Some(DateTime::from_timestamp_millis(first.parse().ok()?)?)
            };
            let holder = (!holder.is_empty()).then(|| holder.to_owned());
            Some(if kind == "ban" {
                ModerationChange::Ban {
                    room,
                    user,
                    until,
                    holder,
                }
            } else {
                ModerationChange::Mute {
                    room,
                    user,
                    until,
                    holder,
                }
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_change_reads_back_as_written() {
        let room = RoomName::parse("lobby", 64, 32).unwrap();
        let bob = UserName::parse("Bob|1", 32).unwrap();
        let now = Utc::now();
        let later = DateTime::from_timestamp_millis(now.timestamp_millis() + 60_000).unwrap();
        for change in [
            ModerationChange::Role {
                room: room.clone(),
                user: bob.clone(),
                role: Role::Moderator,
            },
            ModerationChange::Ban {
                room: room.clone(),
                user: bob.clone(),
                until: Some(later),
                holder: Some("00ff".into()),
            },
            ModerationChange::Mute {
                room: room.clone(),
                user: bob.clone(),
                until: None,
                holder: None,
            },
            ModerationChange::Topic {
                room: room.clone(),
                topic: "a, b | c".into(),
            },
            ModerationChange::SlowMode {
                room: room.clone(),
                seconds: 30,
            },
        ] {
            let (_, field, value) = encode(&change).unwrap();
            assert_eq!(decode(&room, &field, &value), Some(change));
        }
        // Not ours: skipped.
        assert_eq!(decode(&room, "ban,bob,", "soon,bob"), None);
        assert_eq!(decode(&room, "ban,bob,", "1,alice"), None);
        assert_eq!(decode(&room, "kick,bob,", "1,bob"), None);
    }
}
