//! Cluster mode in the runtime (docs/CLUSTER.md): a [`Broker`] carries the engine's
//! cluster outputs to the log several processes share, and hands the log's answers and
//! news back as inputs through a [`BrokerInbox`]. The driver never waits for it: a
//! request is handed over with [`Broker::submit`] and answered later.
//!
//! The runtime holds no broker of its own (chat-core stays free of any database client):
//! `chat_redis::RedisBroker` is the one on Redis. A broker for another log implements
//! this trait and is given to [`HubConfig::cluster`](super::HubConfig::cluster).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Cmd, HubClosed};
use crate::ids::{ClientMsgId, RoomName, Seq, SessionId, UserName};
use crate::protocol::{ModAction, Role};
use crate::server::{Input, Output};

/// What the engine asks of the shared log; each is answered (where it has an answer)
/// through the [`BrokerInbox`], never by blocking [`Broker::submit`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterRequest {
    /// Commit an entry (a message, or a change checked by its rules against the
    /// target's current state in the same atomic step); answer [`Input::Appended`] with
    /// the room and ticket. Appends of one room must be committed in the order submitted.
    Append {
        /// The room.
        room: RoomName,
        /// Echo in the answer.
        ticket: u64,
        /// The author.
        user: UserName,
        /// The text.
        body: Arc<str>,
        /// The author's message id (the log's idempotency key).
        client_id: Option<ClientMsgId>,
        /// A change's kind, target and rules, a reply's target (`None`: a plain
        /// message).
        detail: Option<Box<crate::server::EntryDetail>>,
    },
    /// Keep a user's read marker in a room (forward only) and tell the other servers
    /// holding the room; theirs reach the engine as [`Input::ReadMarkers`].
    ShareRead {
        /// The room.
        room: RoomName,
        /// Whose marker.
        user: UserName,
        /// The last seq read.
        seq: Seq,
    },
    /// Read a user's read markers; answer [`Input::ReadMarkers`].
    LoadReadMarkers {
        /// Whose markers.
        user: UserName,
    },
    /// Read the room's log after `after`; answer [`Input::RoomLog`] with `fetched: true`.
    FetchLog {
        /// The room.
        room: RoomName,
        /// The last seq delivered here.
        after: Seq,
    },
    /// Listen to the room's news, then read it; answer [`Input::ModerationLoaded`] with
    /// its moderation state, then [`Input::RoomLoaded`].
    LoadRoom {
        /// The room.
        room: RoomName,
    },
    /// Stop listening to the room.
    UnloadRoom {
        /// The room.
        room: RoomName,
    },
    /// A user's first session here entered the room, or the last one here left it;
    /// announcements come back as [`Input::Presence`]. Changes of one room must be
    /// counted in the order submitted.
    Presence {
        /// The room.
        room: RoomName,
        /// The user.
        user: UserName,
        /// Entered or left.
        entered: bool,
    },
    /// Read the room's whole presence; answer [`Input::PresenceSnapshot`].
    FetchPresence {
        /// The room.
        room: RoomName,
    },
    /// Read a history page the window does not hold; answer [`Input::HistoryLoaded`].
    LoadHistory {
        /// Echo in the answer.
        ticket: u64,
        /// The room.
        room: RoomName,
        /// Only seqs below this (none: the latest).
        before: Option<Seq>,
        /// Page size.
        limit: usize,
    },
    /// Reserve an anonymous name over all servers for `holder` and keep it reserved
    /// until [`ClusterRequest::ReleaseName`]; answer [`Input::NameClaimed`].
    ClaimName {
        /// The session that said hello (echo in the answer).
        session: SessionId,
        /// The reservation's key (the name's look-alike skeleton).
        key: String,
        /// Who holds it (a hash of the user's token and name).
        holder: String,
    },
    /// Stop keeping the name reserved (let it expire: another server may hold it for
    /// the same holder).
    ReleaseName {
        /// The reservation's key.
        key: String,
    },
    /// The log handed out a seq already delivered as another message: it lost entries.
    /// Replace the cluster epoch; every hub then gets [`Input::EpochChanged`].
    LogRegressed {
        /// The room where it was seen.
        room: RoomName,
        /// The seq handed out again.
        seq: Seq,
    },
    /// A user here typing or stopped: tell the other servers (at most once); theirs
    /// come back as [`Input::Typing`].
    Typing {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
        /// Typing, or stopped.
        active: bool,
    },
    /// Something the host or a moderator did on this server that every other server
    /// must do too (a revocation, a moderation action): publish it to them; theirs come
    /// back through [`BrokerInbox::relayed`].
    Relay(ClusterControl),
    /// Write a change to a room's moderation state into the log (the state every server
    /// reads when it loads the room, and again at each catch-up), then publish `relay`
    /// (if any) as [`ClusterRequest::Relay`] does; answer [`Input::ModerationSaved`]
    /// with the ticket. A change whose `until` has passed needs no lifting: readers
    /// skip ended sanctions.
    SaveModeration {
        /// Echo in the answer.
        ticket: u64,
        /// The change.
        change: crate::ModerationChange,
        /// The action that made it, for the other servers.
        relay: Option<ClusterControl>,
    },
    /// Read a room's moderation state; answer [`Input::ModerationLoaded`]. A
    /// [`ClusterRequest::LoadRoom`] answers it too, before [`Input::RoomLoaded`].
    FetchModeration {
        /// The room.
        room: RoomName,
    },
}

/// A host or moderator action carried out on one server, for every other server of the
/// cluster to carry out on its own sessions and its own copy of the room's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClusterControl {
    /// [`Hub::revoke_user`](super::Hub::revoke_user): close every session of the user.
    Revoke {
        /// The user.
        user: UserName,
    },
    /// A `kick`, `ban`, `unban`, `mute`, `unmute` or `set_role` in a public room.
    Moderated {
        /// The room.
        room: RoomName,
        /// The user concerned.
        user: UserName,
        /// What was done.
        action: ModAction,
        /// Why, if said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// A ban's or mute's length in minutes (rounded up); `None`: until lifted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        minutes: Option<u64>,
        /// `set_role`: the new role.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
        /// The moderator; `None`: the host.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<UserName>,
    },
    /// A room's topic was set (empty: cleared).
    Topic {
        /// The room.
        room: RoomName,
        /// The topic.
        topic: String,
        /// The moderator; `None`: the host.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<UserName>,
    },
    /// A room's slow mode was set (0: off).
    SlowMode {
        /// The room.
        room: RoomName,
        /// Seconds between a member's posts.
        seconds: u32,
        /// The moderator; `None`: the host.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<UserName>,
    },
}

/// The longest reason or topic a relayed action may carry (longer: not ours).
const MAX_RELAYED_TEXT: usize = 4096;

impl ClusterControl {
    /// The action as JSON, for a broker to carry.
    #[must_use]
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// An action from [`ClusterControl::encode`]'s JSON, with every name checked again
    /// (a payload from the wire is not trusted to hold valid names).
    ///
    /// # Errors
    /// Not JSON of an action, a name that is not valid, a text too long.
    pub fn decode(json: &str) -> Result<ClusterControl, String> {
        let c: ClusterControl = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let user_ok = |u: &UserName| {
            UserName::parse(u.as_str(), usize::MAX).is_ok_and(|p| p.as_str() == u.as_str())
        };
        let room_ok = |r: &RoomName| {
            !r.as_str().starts_with('@')
                && RoomName::parse(r.as_str(), usize::MAX, usize::MAX)
                    .is_ok_and(|p| p.as_str() == r.as_str())
        };
        let text_ok = |t: Option<&str>| t.is_none_or(|t| t.len() <= MAX_RELAYED_TEXT);
        let ok = match &c {
            ClusterControl::Revoke { user } => user_ok(user),
            ClusterControl::Moderated {
                room,
                user,
                reason,
                by,
                ..
            } => {
                room_ok(room)
                    && user_ok(user)
                    && by.as_ref().is_none_or(user_ok)
                    && text_ok(reason.as_deref())
            }
            ClusterControl::Topic { room, topic, by } => {
                room_ok(room) && by.as_ref().is_none_or(user_ok) && text_ok(Some(topic))
            }
            ClusterControl::SlowMode { room, by, .. } => {
                room_ok(room) && by.as_ref().is_none_or(user_ok)
            }
        };
        if ok {
            Ok(c)
        } else {
            Err("a name or text that is not valid".into())
        }
    }
}

impl ClusterRequest {
    /// The request an output makes, or the output back if it is not a cluster output.
    pub(super) fn from_output(output: Output) -> Result<ClusterRequest, Output> {
        Ok(match output {
            Output::Append {
                room,
                ticket,
                user,
                body,
                client_id,
                detail,
            } => ClusterRequest::Append {
                room,
                ticket,
                user,
                body,
                client_id,
                detail,
            },
            Output::FetchLog { room, after } => ClusterRequest::FetchLog { room, after },
            Output::ShareRead { room, user, seq } => ClusterRequest::ShareRead { room, user, seq },
            Output::LoadReadMarkers { user } => ClusterRequest::LoadReadMarkers { user },
            Output::LoadRoom { room } => ClusterRequest::LoadRoom { room },
            Output::FetchModeration { room } => ClusterRequest::FetchModeration { room },
            Output::UnloadRoom { room } => ClusterRequest::UnloadRoom { room },
            Output::Presence {
                room,
                user,
                entered,
            } => ClusterRequest::Presence {
                room,
                user,
                entered,
            },
            Output::FetchPresence { room } => ClusterRequest::FetchPresence { room },
            Output::ClaimName {
                session,
                key,
                holder,
                ..
            } => ClusterRequest::ClaimName {
                session,
                key,
                holder,
            },
            Output::ReleaseName { key } => ClusterRequest::ReleaseName { key },
            Output::LogRegressed { room, seq } => ClusterRequest::LogRegressed { room, seq },
            Output::Typing { room, user, active } => ClusterRequest::Typing { room, user, active },
            other => return Err(other),
        })
    }
}

/// Where a broker hands inputs back to the hub's engine.
#[derive(Debug, Clone)]
pub struct BrokerInbox {
    /// Answers to requests: taken before clients' frames, never refused (they are
    /// bounded by the requests outstanding).
    answers: mpsc::UnboundedSender<Cmd>,
    /// News from the log: through the hub's bounded inbox, so a busy engine slows the
    /// broker down instead of piling news up.
    news: mpsc::Sender<Cmd>,
}

impl BrokerInbox {
    pub(super) fn new(answers: mpsc::UnboundedSender<Cmd>, news: mpsc::Sender<Cmd>) -> Self {
        BrokerInbox { answers, news }
    }

    /// Hands over the answer to a request (`Appended`, `RoomLoaded`, a fetched
    /// `RoomLog`, `PresenceSnapshot`).
    ///
    /// # Errors
    /// The hub has stopped.
    pub fn answer(&self, input: Input) -> Result<(), HubClosed> {
        self.answers.send(Cmd::Input(input)).map_err(|_| HubClosed)
    }

    /// Hands over an action another server relayed ([`ClusterRequest::Relay`] there):
    /// this hub carries it out on its own sessions and settings, and relays it no
    /// further. Waits while the hub's inbox is full.
    ///
    /// # Errors
    /// The hub has stopped.
    pub async fn relayed(&self, control: ClusterControl) -> Result<(), HubClosed> {
        self.news
            .send(Cmd::Relayed(control))
            .await
            .map_err(|_| HubClosed)
    }

    /// Hands over news from the log (doorbells, presence announcements, catch-ups);
    /// waits while the hub's inbox is full.
    ///
    /// # Errors
    /// The hub has stopped.
    pub async fn notify(&self, input: Input) -> Result<(), HubClosed> {
        self.news
            .send(Cmd::Input(input))
            .await
            .map_err(|_| HubClosed)
    }
}

/// A future a broker returns.
pub type BrokerFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The answer of [`Broker::rooms_of`].
pub type RoomsFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<RoomName>, crate::server::StoreError>> + Send + 'a>>;

/// The link between one hub and the log it shares with other processes (cluster mode).
/// Given to [`HubConfig::cluster`](super::HubConfig::cluster), the hub runs in cluster
/// mode: its epoch is the broker's, every post is committed through it, and rooms and
/// presence come from it.
pub trait Broker: Send + Sync + 'static {
    /// The cluster epoch, told to clients in `welcome` (seqs are comparable only within
    /// one epoch).
    fn epoch(&self) -> String;
    /// The token secret every process of the cluster shares (used when
    /// `HubConfig.core.secret` is left all zeros).
    fn secret(&self) -> [u8; 32];
    /// Called once by [`Hub::spawn`](super::Hub::spawn) before any request: where to
    /// hand inputs back.
    fn start(&self, inbox: BrokerInbox);
    /// Takes one request. Must not block: the answer comes later through the inbox.
    fn submit(&self, request: ClusterRequest);
    /// Called once when the hub stops, after its last request: release what this
    /// process holds in the log (its presence), stop background work.
    fn stop(&self) -> BrokerFuture<'_>;
    /// The rooms where `user` wrote (posted, edited, deleted or reacted) on any server,
    /// as the log recorded them: what [`Hub::erase_user`](super::Hub::erase_user) erases
    /// (with the rooms of this server's windows). A room may be named where the user
    /// has nothing left. The default answers an error: a broker that keeps no such
    /// record cannot erase (the call then changes nothing).
    fn rooms_of(&self, user: &UserName) -> RoomsFuture<'_> {
        let _ = user;
        Box::pin(async {
            Err(crate::server::StoreError::Unavailable(
                "this broker does not record the rooms a user wrote in".into(),
            ))
        })
    }
    /// Called once by [`Hub::spawn`](super::Hub::spawn) before [`Broker::start`]: the
    /// hub's [`Config::retention`](crate::Config::retention), this server's policy for
    /// rooms that have none of their own in the log. The default ignores it (a broker
    /// without retention keeps what its log keeps).
    fn default_retention(&self, policy: Option<crate::Retention>) {
        let _ = policy;
    }
    /// [`Hub::set_retention`](super::Hub::set_retention) in cluster mode: keep `room`'s
    /// own policy in the log, for every server to enforce; resolves once it is stored
    /// (`Err` with why not). The default: not supported.
    fn set_retention(
        &self,
        room: RoomName,
        policy: crate::Retention,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        let _ = (room, policy);
        Box::pin(async { Err("this cluster broker keeps no retention policies".to_owned()) })
    }
}

#[cfg(test)]
mod tests {
    use super::ClusterControl;
    use crate::ids::{RoomName, UserName};
    use crate::protocol::{ModAction, Role};

    fn user(s: &str) -> UserName {
        UserName::parse(s, 32).unwrap()
    }

    #[test]
    fn an_action_crosses_as_json_and_comes_back_the_same() {
        let room = RoomName::parse("lobby", 64, 32).unwrap();
        for c in [
            ClusterControl::Revoke { user: user("Ann") },
            ClusterControl::Moderated {
                room: room.clone(),
                user: user("bob"),
                action: ModAction::Ban,
                reason: Some("spam | \"quoted\"".into()),
                minutes: Some(10),
                role: None,
                by: Some(user("carol")),
            },
            ClusterControl::Moderated {
                room: room.clone(),
                user: user("bob"),
                action: ModAction::SetRole,
                reason: None,
                minutes: None,
                role: Some(Role::Moderator),
                by: None,
            },
            ClusterControl::Topic {
                room: room.clone(),
                topic: "release on friday".into(),
                by: None,
            },
            ClusterControl::SlowMode {
                room,
                seconds: 30,
                by: Some(user("carol")),
            },
        ] {
            assert_eq!(ClusterControl::decode(&c.encode()), Ok(c));
        }
    }

    #[test]
    fn a_payload_with_names_no_server_would_accept_is_refused() {
        for bad in [
            r#"{"kind":"revoke","user":"has space"}"#,
            r#"{"kind":"revoke","user":""}"#,
            r#"{"kind":"topic","room":"@a,b","topic":"x"}"#,
            r#"{"kind":"topic","room":"Lobby","topic":"x"}"#,
            r#"{"kind":"moderated","room":"lobby","user":"bob","action":"ban","by":"a@b"}"#,
            r#"{"kind":"explode"}"#,
            "not json",
        ] {
            assert!(ClusterControl::decode(bad).is_err(), "{bad}");
        }
        let long = format!(
            r#"{{"kind":"topic","room":"lobby","topic":"{}"}}"#,
            "x".repeat(5000)
        );
        assert!(ClusterControl::decode(&long).is_err());
    }
}
