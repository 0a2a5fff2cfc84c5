//! `react`: add or take back the user's reaction with one emoji to a message.

use unicode_segmentation::UnicodeSegmentation;

use super::{Caller, Reject};
use crate::ids::{Seq, UserKey};
use crate::protocol::{EntryKind, ErrorCode, MAX_EMOJI_BYTES, Message, ReactRequest};
use crate::server::State;

impl State {
    pub(super) fn react(
        &mut self,
        caller: &mut Caller<'_>,
        user: &UserKey,
        req: ReactRequest,
    ) -> Result<(), Reject> {
        let ReactRequest {
            id,
            room,
            seq,
            emoji,
            on,
            client_id,
        } = req;
        let room = self.change_room(caller, user, &room)?;
        check_emoji(&emoji)?;
        if !self.is_resend(&room, user, client_id.as_ref()) {
            let target = self.change_target(&room, seq)?;
            let max = self.config.max_reactions_per_message;
            let known = target.reactions.iter().any(|r| r.emoji == emoji);
            if on && !known && target.reactions.len() >= max {
                let msg = format!("{room}#{seq} has reactions with {max} emoji, the most it may");
                return Err(Reject::new(ErrorCode::LimitReached, msg));
            }
        }
        let author = self.users.display_name(user);
        let mut entry = Message::new(room, Seq(0), caller.now.utc, author, "".into(), client_id);
        entry.kind = EntryKind::React;
        entry.target = Some(seq);
        entry.emoji = Some(emoji);
        entry.on = Some(on);
        self.post_change(caller, user, id, entry, false)
    }
}

/// A reaction is one emoji: one grapheme that the Unicode emoji list knows (with its
/// skin tone, or a ZWJ sequence), at most [`MAX_EMOJI_BYTES`] bytes. Several emoji are
/// several reactions.
fn check_emoji(emoji: &str) -> Result<(), Reject> {
    let shown: String = emoji.chars().take(16).collect();
    if emoji.len() > MAX_EMOJI_BYTES {
        let msg = format!("an emoji is at most {MAX_EMOJI_BYTES} bytes");
        return Err(Reject::new(ErrorCode::InvalidEmoji, msg));
    }
    let graphemes: Vec<&str> = emoji.graphemes(true).collect();
    let is_emoji = |g: &str| emojis::get(g).is_some();
    match graphemes.as_slice() {
        [one] if is_emoji(one) => Ok(()),
        [_, _, ..] if graphemes.iter().all(|g| is_emoji(g)) => Err(Reject::new(
            ErrorCode::LimitReached,
            "one emoji per reaction (send one react for each)",
        )),
        _ => Err(Reject::new(
            ErrorCode::InvalidEmoji,
            format!("{shown:?} is not an emoji"),
        )),
    }
}
