//! The exactly-once check at the end of a run: every acked message reached every
//! membership of every client once, in seq order, or the client was told of a gap.

use std::collections::{BTreeSet, HashMap};

use crate::client::Record;

/// What the check found.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Deliveries owed (acked seqs inside a membership, gaps excluded).
    pub owed: u64,
    /// Owed deliveries that never arrived.
    pub lost: u64,
    /// Acked seqs the server reported as a gap to a resuming client.
    pub gap_excused: u64,
    /// Memberships checked.
    pub spans: u64,
    /// The first few losses: (client and role, room, seq).
    pub examples: Vec<(String, String, u64)>,
}

/// Checks every record against the acked seqs.
pub fn delivery(records: &[Record], acked: &HashMap<String, BTreeSet<u64>>) -> Delivery {
    let mut d = Delivery::default();
    let empty = BTreeSet::new();
    for r in records {
        for (room, track) in &r.tracks {
            let acked = acked.get(room).unwrap_or(&empty);
            let last = acked.last().copied().unwrap_or(0);
            for span in &track.spans {
                d.spans += 1;
                // A membership still open at the end is owed everything acked; one that
                // ended with `leave` is owed what came before its last delivery.
                let end = span.end.unwrap_or(last);
                if end <= span.start {
                    continue;
                }
                for &seq in acked.range(span.start + 1..=end) {
                    if span.gaps.iter().any(|g| g.0 <= seq && seq <= g.1) {
                        d.gap_excused += 1;
                        continue;
                    }
                    d.owed += 1;
                    let i = span.ranges.partition_point(|x| x.1 < seq);
                    let got = span.ranges.get(i).is_some_and(|x| x.0 <= seq);
                    if !got {
                        d.lost += 1;
                        if d.examples.len() < 20 {
                            d.examples.push((
                                format!("{} ({}, main room {})", r.name, r.role.name(), r.room),
                                room.clone(),
                                seq,
                            ));
                        }
                    }
                }
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Role, Span, Track};
    use std::collections::BTreeMap;

    fn record(spans: Vec<Span>) -> Record {
        let mut tracks = BTreeMap::new();
        tracks.insert(
            "general".to_string(),
            Track {
                cursor: None,
                spans,
                open: true,
            },
        );
        Record {
            name: "a".into(),
            role: Role::PingOnly,
            room: "general".into(),
            tracks,
        }
    }

    fn acked(seqs: &[u64]) -> HashMap<String, BTreeSet<u64>> {
        HashMap::from([("general".to_string(), seqs.iter().copied().collect())])
    }

    #[test]
    fn a_missing_acked_seq_is_lost_unless_reported_as_a_gap() {
        let span = Span {
            start: 0,
            ranges: vec![(1, 2), (4, 5)],
            gaps: vec![],
            end: None,
        };
        let d = delivery(&[record(vec![span.clone()])], &acked(&[1, 2, 3, 4, 5]));
        assert_eq!((d.owed, d.lost), (5, 1));
        assert_eq!(d.examples[0].2, 3);
        assert!(d.examples[0].0.starts_with("a (ping-only reader"));

        let told = Span {
            gaps: vec![(3, 3)],
            ..span
        };
        let d = delivery(&[record(vec![told])], &acked(&[1, 2, 3, 4, 5]));
        assert_eq!((d.owed, d.lost, d.gap_excused), (4, 0, 1));
    }

    #[test]
    fn an_unacked_seq_is_not_owed_and_a_closed_membership_owes_nothing_after() {
        // Seq 3 was never acked (its sender's connection died); the member left after 4.
        let span = Span {
            start: 0,
            ranges: vec![(1, 2), (4, 4)],
            gaps: vec![],
            end: Some(4),
        };
        let d = delivery(&[record(vec![span])], &acked(&[1, 2, 4, 5, 6]));
        assert_eq!((d.owed, d.lost), (3, 0));
    }

    #[test]
    fn an_open_membership_is_owed_up_to_the_last_ack() {
        let span = Span {
            start: 2,
            ranges: vec![(3, 4)],
            gaps: vec![],
            end: None,
        };
        let d = delivery(&[record(vec![span])], &acked(&[1, 2, 3, 4, 5]));
        assert_eq!((d.owed, d.lost), (3, 1));
    }
}
