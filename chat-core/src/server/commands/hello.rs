//! `hello`: the protocol version, the name (anonymous mode) or the host's identity
//! check (host mode), then `welcome` and the first rooms.

use super::{Caller, Reject};
use crate::ids::UserName;
use crate::ids::{RequestId, SessionId};
use crate::protocol::{
    ErrorCode, HelloRequest, JoinRequest, JoinSpec, PROTOCOL_VERSION, PROTOCOL_VERSION_1,
    ServerFrame,
};
use crate::server::config::AuthMode;
use crate::server::outputs::{CloseReason, Event, Output};
use crate::server::sessions::Phase;
use crate::server::{ApiMisuse, AuthRefused, Identity, Now, Server, State};

impl State {
    pub(super) fn hello(
        &mut self,
        caller: &mut Caller<'_>,
        req: HelloRequest,
    ) -> Result<(), Reject> {
        let HelloRequest {
            id,
            version,
            name,
            token,
            rooms,
        } = req;
        if self.shutting_down {
            return Err(Reject::closing(
                ErrorCode::ShuttingDown,
                "the server is shutting down",
                CloseReason::Shutdown,
            ));
        }
        if version != PROTOCOL_VERSION && version != PROTOCOL_VERSION_1 {
            return Err(Reject::closing(
                ErrorCode::UnsupportedVersion,
                format!(
                    "this server speaks protocol version {PROTOCOL_VERSION} \
                     (and {PROTOCOL_VERSION_1}, deprecated)"
                ),
                CloseReason::UnsupportedVersion,
            ));
        }
        caller.session.version = version;
        if caller.session.host_identity {
            return self.hello_as_identity(caller, id, rooms);
        }
        if self.config.auth == AuthMode::Host {
            caller.session.phase = Phase::Authenticating { id, rooms };
            self.out.push(Output::Authenticate {
                session: caller.sid,
                name,
                credentials: token,
            });
            return Ok(());
        }
        let name = UserName::parse(&name, self.config.max_name_chars)
            .map_err(|e| Reject::new(ErrorCode::InvalidName, format!("name {e}")))?;
        if self.name_free_here(&name, token.as_deref())? && self.config.cluster {
            // Nobody here holds the name: another server may.
            self.claim_name(caller, id, rooms, name, token);
            return Ok(());
        }
        self.welcome(caller, id, &name, rooms, true, None);
        Ok(())
    }

    /// Whether `name` is free on this server (`true`), or held here by the user whose
    /// `token` this is (`false`); refused when another user here holds it or a name that
    /// looks like it.
    pub(in crate::server) fn name_free_here(
        &self,
        name: &UserName,
        token: Option<&str>,
    ) -> Result<bool, Reject> {
        if let Some(user) = self.users.get(&name.key()) {
            let proven = match (token, user.token.as_deref()) {
                // A token is a secret: compared as BLAKE3 hashes, whose `==` runs in
                // constant time (blake3::Hash), so timing tells nothing of a guess.
                (Some(given), Some(held)) => {
                    blake3::hash(given.as_bytes()) == blake3::hash(held.as_bytes())
                }
                _ => false,
            };
            if !proven {
                let msg = format!("the name {} is in use", user.name);
                return Err(Reject::new(ErrorCode::NameTaken, msg));
            }
            return Ok(false);
        }
        if let Some(user) = self.users.lookalike_of(name) {
            // Whatever the token: a name that only looks like another user's would let
            // its holder pass for that user, in every room.
            let msg = format!("the name {name} looks like {}, which is in use", user.name);
            return Err(Reject::new(ErrorCode::NameTaken, msg));
        }
        Ok(true)
    }

    /// The session came with the host's identity: the hello's name and token mean
    /// nothing, the user is the identity's.
    fn hello_as_identity(
        &mut self,
        caller: &mut Caller<'_>,
        id: Option<RequestId>,
        rooms: Option<Vec<JoinSpec>>,
    ) -> Result<(), Reject> {
        let user = caller
            .session
            .identity
            .as_ref()
            .map_or("", |i| i.user.as_str());
        let name = UserName::parse(user, self.config.max_name_chars).map_err(|e| {
            Reject::closing(
                ErrorCode::AuthFailed,
                format!("identity name {e}"),
                CloseReason::AuthFailed,
            )
        })?;
        if let Some(held) = self.users.get(&name.key())
            && held.token.is_some()
        {
            // An anonymous user holds the name: the host's user must not become theirs.
            let msg = format!("the name {} is in use by an anonymous user", held.name);
            return Err(Reject::new(ErrorCode::NameTaken, msg));
        }
        self.welcome(caller, id, &name, rooms, false, None);
        Ok(())
    }

    /// Welcomes the session as `name`, then joins the rooms it asked for (or the
    /// default rooms), each answered as its own `join`. An `anonymous` new user gets
    /// `token` (cluster mode: the one its name was reserved with) or a new one.
    pub(in crate::server) fn welcome(
        &mut self,
        caller: &mut Caller<'_>,
        id: Option<RequestId>,
        name: &UserName,
        rooms: Option<Vec<JoinSpec>>,
        anonymous: bool,
        token: Option<String>,
    ) {
        let key = name.key();
        let now = caller.now.utc;
        let user = match token {
            Some(token) => self.users.claim_with(name, Some(token), now),
            None => self.users.claim(name, anonymous, &self.config.secret, now),
        };
        user.sessions.insert(caller.sid);
        user.grace_until = None;
        let (user_name, token) = (user.name.clone(), user.token.clone());
        if self.config.cluster && user.sessions.len() == 1 {
            // The user's markers live in the shared log: this server reads them once
            // per stay of the user (a `read` frame tells the sessions when they come).
            self.out.push(Output::LoadReadMarkers {
                user: user_name.clone(),
            });
        }
        caller.session.phase = Phase::Ready(key.clone());
        if caller.session.identity.is_none() {
            caller.session.identity = Some(std::sync::Arc::new(Identity::new(user_name.as_str())));
        }
        self.out.send_to(
            caller.sid,
            &ServerFrame::Welcome {
                id,
                version: caller.session.version,
                session: caller.sid,
                user: user_name.clone(),
                token,
                epoch: self.config.epoch.clone(),
                limits: self.config.limits(),
            },
        );
        self.out.event(Event::SessionOpened {
            session: caller.sid,
            user: user_name,
        });
        let specs = rooms.unwrap_or_else(|| {
            self.config
                .default_rooms
                .iter()
                .map(|r| JoinSpec {
                    room: r.clone(),
                    since: None,
                })
                .collect()
        });
        for spec in specs.into_iter().take(self.config.max_rooms_per_session) {
            let join = JoinRequest {
                id: None,
                room: spec.room,
                since: spec.since,
            };
            let result = self.join(caller, &key, join);
            let max = self.config.max_strikes;
            if caller
                .settle(&mut self.out, max, None, true, result)
                .is_some()
            {
                break;
            }
        }
    }
}

impl Server {
    /// The host's answer about a session's identity: welcome it, or refuse and close.
    pub(crate) fn on_authenticated(
        &mut self,
        now: Now,
        sid: SessionId,
        result: Result<String, AuthRefused>,
    ) -> Result<(), ApiMisuse> {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return Ok(());
        };
        let (id, rooms) = match std::mem::replace(&mut session.phase, Phase::New) {
            Phase::Authenticating { id, rooms } => (id, rooms),
            // A stray answer must not reset a welcomed session.
            other => {
                session.phase = other;
                return Err(ApiMisuse::NotAuthenticating(sid));
            }
        };
        let st = &mut self.st;
        let name = result.map_err(|r| r.reason).and_then(|n| {
            UserName::parse(&n, st.config.max_name_chars).map_err(|e| format!("identity name {e}"))
        });
        let mut caller = Caller {
            now,
            sid,
            session,
            parked: false,
        };
        let result = match name {
            Ok(name) => {
                st.welcome(&mut caller, id, &name, rooms, false, None);
                Ok(())
            }
            Err(reason) => Err(Reject::closing(
                ErrorCode::AuthFailed,
                reason,
                CloseReason::AuthFailed,
            )),
        };
        let close = caller.settle(&mut st.out, st.config.max_strikes, id, false, result);
        if let Some(reason) = close {
            self.drop_session(now, sid, Some(reason));
        }
        Ok(())
    }
}
