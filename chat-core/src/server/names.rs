//! Cluster mode: anonymous names held over all servers. A name nobody on this server
//! holds is reserved in the shared log before the hello is welcomed
//! ([`Output::ClaimName`] → [`Input::NameClaimed`](super::Input::NameClaimed)), so two
//! servers cannot hand one name to two people; the reservation is kept while this server
//! holds the user and left to expire after ([`Output::ReleaseName`]).

use super::commands::Caller;
use super::outputs::Output;
use super::reject::Reject;
use super::sessions::Phase;
use super::users::lookalike;
use super::{ApiMisuse, Now, Server, State, StoreError};
use crate::ids::{RequestId, SessionId, UserKey, UserName};
use crate::protocol::{ErrorCode, JoinSpec};

impl State {
    /// Asks the log to reserve `name` for the user holding `token` (the one the hello
    /// proved, or a new one), and parks the hello until it answers.
    pub(super) fn claim_name(
        &mut self,
        caller: &mut Caller<'_>,
        id: Option<RequestId>,
        rooms: Option<Vec<JoinSpec>>,
        name: UserName,
        token: Option<String>,
    ) {
        let token = token.unwrap_or_else(|| self.users.mint(&name.key(), &self.config.secret));
        let holder = holder(&self.config.secret, &token, &name.key());
        self.out.push(Output::ClaimName {
            session: caller.sid,
            key: lookalike(&name),
            name: name.clone(),
            holder,
        });
        caller.session.phase = Phase::Claiming {
            id,
            rooms,
            name,
            token,
        };
    }

    /// The user left this server for good (its grace period ended): in cluster mode the
    /// log stops keeping its name reserved for this server.
    pub(super) fn release_name(&mut self, name: &UserName) {
        if self.config.cluster && self.config.auth == super::AuthMode::Anonymous {
            self.out.push(Output::ReleaseName {
                key: lookalike(name),
            });
        }
    }
}

impl Server {
    /// The log's answer to [`Output::ClaimName`]: welcome the hello, or refuse it (the
    /// session stays open and may say hello again).
    pub(super) fn on_name_claimed(
        &mut self,
        now: Now,
        sid: SessionId,
        result: Result<bool, StoreError>,
    ) -> Result<(), ApiMisuse> {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return Ok(());
        };
        let (id, rooms, name, token) = match std::mem::replace(&mut session.phase, Phase::New) {
            Phase::Claiming {
                id,
                rooms,
                name,
                token,
            } => (id, rooms, name, token),
            other => {
                session.phase = other;
                return Err(ApiMisuse::NotClaiming(sid));
            }
        };
        let st = &mut self.st;
        let result = match result {
            // Another session of this server may have taken the name (or one like it)
            // while the log was asked: the same rules as for a hello apply again.
            Ok(true) => st.name_free_here(&name, Some(&token)).map(|_| ()),
            Ok(false) => Err(Reject::new(
                ErrorCode::NameTaken,
                format!("the name {name} is in use"),
            )),
            Err(e) => Err(Reject::new(
                ErrorCode::StorageUnavailable,
                format!("names cannot be checked now, retry later ({})", e.detail()),
            )),
        };
        let mut caller = Caller {
            now,
            sid,
            session,
            parked: false,
        };
        if result.is_ok() {
            st.welcome(&mut caller, id, &name, rooms, true, Some(token));
        }
        let close = caller.settle(&mut st.out, st.config.max_strikes, id, false, result);
        if let Some(reason) = close {
            self.drop_session(now, sid, Some(reason));
        }
        Ok(())
    }
}

/// Who holds a reserved name, as the log keeps it: a keyed hash of the token and the
/// name's key, the same on every server (they share the secret) and useless to whoever
/// reads the log (the token is the user's proof of identity).
pub(super) fn holder(secret: &[u8; 32], token: &str, key: &UserKey) -> String {
    let mut input = Vec::with_capacity(token.len() + key.as_str().len() + 1);
    input.extend_from_slice(token.as_bytes());
    input.push(0);
    input.extend_from_slice(key.as_str().as_bytes());
    blake3::keyed_hash(secret, &input).to_hex()[..32].to_owned()
}
