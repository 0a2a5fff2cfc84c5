//! Idle rooms leave memory and come back from the SQLite file (`Config::room_idle_unload`,
//! through the real runtime): a resume into an unloaded room gets exactly the missed
//! messages, its history is complete, a direct conversation goes on, presence is right,
//! and `max_rooms` bounds the rooms in memory, not the rooms ever created — also after a
//! restart on the same file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chat_core::protocol::{
    ClientFrame, ErrorCode, HelloRequest, HistoryRequest, JoinRequest, Message, SendRequest,
    ServerFrame,
};
use chat_core::runtime::transport::Connection;
use chat_core::runtime::{Durability, Hub, HubConfig, SqliteStore};
use chat_core::{Config, Rate, RequestId, Seq};

const WAIT: Duration = Duration::from_secs(10);
/// Short, so rooms go idle within a test (real time: the store reads on blocking threads).
const IDLE: Duration = Duration::from_millis(150);

fn config(max_rooms: usize) -> Config {
    Config {
        send_rate: Rate {
            burst: 10_000,
            per_second: 10_000,
        },
        frame_rate: Rate {
            burst: 20_000,
            per_second: 20_000,
        },
        // Small, so a reloaded room's window does not hold its whole history.
        history_window: 20,
        history_on_join: 5,
        presence_grace: Duration::from_millis(50),
        room_idle_unload: IDLE,
        max_rooms,
        ..Config::default()
    }
}

async fn hub(path: &Path, max_rooms: usize) -> Hub {
    let store = SqliteStore::open(path, Durability::Normal).expect("the store opens");
    Hub::spawn(HubConfig {
        core: config(max_rooms),
        store: Some(Arc::new(store)),
        ..HubConfig::default()
    })
    .await
    .expect("the hub starts")
}

/// Waits until the hub holds `n` rooms in memory.
async fn rooms_in_memory(hub: &Hub, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.stats().rooms != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} rooms in memory, expected {n}",
            hub.stats().rooms
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Client {
    conn: Connection,
    next_id: u64,
}

impl Client {
    async fn hello(hub: &Hub, name: &str) -> Client {
        let mut c = Client {
            conn: hub.connect().await.expect("hub runs"),
            next_id: 100,
        };
        c.send(ClientFrame::Hello(HelloRequest {
            id: None,
            version: 1,
            name: name.into(),
            token: None,
            rooms: Some(vec![]),
        }))
        .await;
        c.until(|f| matches!(f, ServerFrame::Welcome { .. }).then_some(()))
            .await;
        c
    }

    async fn send(&mut self, frame: ClientFrame) {
        self.conn.send(frame).await.expect("hub runs");
    }

    fn id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId(self.next_id)
    }

    async fn until<T>(&mut self, mut f: impl FnMut(&ServerFrame) -> Option<T>) -> T {
        loop {
            let frame = tokio::time::timeout(WAIT, self.conn.recv())
                .await
                .expect("a frame in time")
                .expect("the session is open");
            if let Some(t) = f(&frame) {
                return t;
            }
        }
    }

    /// The answer to request `id` (whatever its type).
    async fn answer(&mut self, id: RequestId) -> ServerFrame {
        self.until(|f| {
            let answers = match f {
                ServerFrame::Joined { id: i, .. }
                | ServerFrame::Left { id: i, .. }
                | ServerFrame::Ack { id: i, .. }
                | ServerFrame::History { id: i, .. }
                | ServerFrame::Rooms { id: i, .. }
                | ServerFrame::Error { id: i, .. } => *i == Some(id),
                _ => false,
            };
            answers.then(|| f.clone())
        })
        .await
    }

    /// Joins (or resumes after `since`): (members, messages' seqs, gap, last_seq).
    async fn join(&mut self, room: &str, since: Option<u64>) -> (Vec<String>, Vec<u64>, bool, u64) {
        let id = self.id();
        self.send(ClientFrame::Join(JoinRequest {
            id: Some(id),
            room: room.into(),
            since: since.map(Seq),
        }))
        .await;
        match self.answer(id).await {
            ServerFrame::Joined {
                members,
                messages,
                gap,
                last_seq,
                ..
            } => (
                members.iter().map(ToString::to_string).collect(),
                messages.iter().map(|m| m.seq.0).collect(),
                gap,
                last_seq.0,
            ),
            other => panic!("join {room}: {other:?}"),
        }
    }

    async fn leave(&mut self, room: &str) {
        let id = self.id();
        self.send(ClientFrame::Leave {
            id: Some(id),
            room: room.into(),
        })
        .await;
        assert!(matches!(self.answer(id).await, ServerFrame::Left { .. }));
    }

    /// Posts to a room (`room`) or a user (`@name`) and waits for the answer.
    async fn post(&mut self, to: &str, body: &str) -> ServerFrame {
        let id = self.id();
        let (room, to) = match to.strip_prefix('@') {
            Some(user) => (None, Some(user.to_owned())),
            None => (Some(to.to_owned()), None),
        };
        self.send(ClientFrame::Send(SendRequest {
            id: Some(id),
            room,
            to,
            body: body.into(),
            client_id: None,
            reply_to: None,
        }))
        .await;
        self.answer(id).await
    }

    async fn post_acked(&mut self, to: &str, body: &str) -> u64 {
        match self.post(to, body).await {
            ServerFrame::Ack { seq, .. } => seq.0,
            other => panic!("send to {to}: {other:?}"),
        }
    }

    /// Every message of a room, paging backwards from the latest.
    async fn full_history(&mut self, room: &str) -> Vec<Arc<Message>> {
        let mut all = Vec::new();
        let mut before = None;
        loop {
            let id = self.id();
            self.send(ClientFrame::History(HistoryRequest {
                id: Some(id),
                room: room.into(),
                before,
                limit: Some(7),
            }))
            .await;
            let ServerFrame::History {
                mut messages,
                has_more,
                ..
            } = self.answer(id).await
            else {
                panic!("history of {room}");
            };
            before = messages.first().map(|m| m.seq);
            let done = !has_more || messages.is_empty();
            messages.append(&mut all);
            all = messages;
            if done {
                return all;
            }
        }
    }

    /// The rooms listing: (name, members, last_seq).
    async fn rooms(&mut self) -> Vec<(String, usize, u64)> {
        let id = self.id();
        self.send(ClientFrame::Rooms { id: Some(id) }).await;
        match self.answer(id).await {
            ServerFrame::Rooms { rooms, .. } => rooms
                .iter()
                .map(|r| (r.name.to_string(), r.members, r.last_seq.0))
                .collect(),
            other => panic!("rooms: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_into_an_unloaded_room_gets_exactly_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(&dir.path().join("chat.db"), 100).await;
    let mut alice = Client::hello(&hub, "alice").await;
    let mut bob = Client::hello(&hub, "bob").await;
    alice.join("lobby", None).await;
    bob.join("lobby", None).await;
    for i in 1..=10 {
        alice.post_acked("lobby", &format!("m{i}")).await;
    }
    bob.leave("lobby").await; // bob has seen up to 10
    for i in 11..=30 {
        alice.post_acked("lobby", &format!("m{i}")).await;
    }
    alice.leave("lobby").await;
    rooms_in_memory(&hub, 0).await;
    assert_eq!(
        bob.rooms().await,
        vec![("lobby".to_owned(), 0, 30)],
        "an unloaded room is still listed, with its last seq"
    );

    let (members, seqs, gap, last) = bob.join("lobby", Some(10)).await;
    assert_eq!(members, ["bob"], "nobody else is in the reloaded room");
    assert_eq!(
        seqs,
        (11..=30).collect::<Vec<_>>(),
        "exactly the missed suffix"
    );
    assert!(!gap);
    assert_eq!(last, 30);
    alice.join("lobby", None).await;
    assert_eq!(
        alice.post_acked("lobby", "m31").await,
        31,
        "the seq goes on"
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_of_an_unloaded_room_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(&dir.path().join("chat.db"), 100).await;
    let mut alice = Client::hello(&hub, "alice").await;
    alice.join("archive", None).await;
    for i in 1..=45 {
        alice.post_acked("archive", &format!("m{i}")).await;
    }
    alice.leave("archive").await;
    rooms_in_memory(&hub, 0).await;
    let (_, seqs, gap, _) = alice.join("archive", None).await;
    assert_eq!((seqs, gap), ((41..=45).collect(), false));
    let all = alice.full_history("archive").await;
    let seqs: Vec<u64> = all.iter().map(|m| m.seq.0).collect();
    assert_eq!(seqs, (1..=45).collect::<Vec<_>>());
    assert_eq!(&*all[44].body, "m45");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_conversation_unloaded_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(&dir.path().join("chat.db"), 100).await;
    let mut alice = Client::hello(&hub, "alice").await;
    let mut bob = Client::hello(&hub, "bob").await;
    assert_eq!(alice.post_acked("@bob", "hi bob").await, 1);
    rooms_in_memory(&hub, 0).await;
    // Both are online: the conversation left memory all the same, and comes back.
    assert_eq!(alice.post_acked("@bob", "still there?").await, 2);
    let got = bob
        .until(|f| match f {
            ServerFrame::Message(m) if m.seq == Seq(2) => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(&*got.body, "still there?");
    rooms_in_memory(&hub, 0).await;
    let (members, seqs, gap, last) = bob.join("@alice,bob", Some(0)).await;
    assert_eq!(members, ["alice", "bob"]);
    assert_eq!(seqs, [1, 2]);
    assert!(!gap);
    assert_eq!(last, 2);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_someone_is_in_stays_and_presence_is_right_after_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(&dir.path().join("chat.db"), 100).await;
    let mut carol = Client::hello(&hub, "carol").await;
    let mut dave = Client::hello(&hub, "dave").await;
    carol.join("den", None).await;
    carol.post_acked("den", "carol stays").await;
    dave.join("porch", None).await;
    dave.post_acked("porch", "dave goes").await;
    dave.leave("porch").await;
    rooms_in_memory(&hub, 1).await; // porch went, den stays
    tokio::time::sleep(IDLE * 4).await;
    assert_eq!(hub.stats().rooms, 1, "a room with a member stays in memory");

    // porch comes back with nobody in it; den still lists carol.
    let (members, seqs, _, _) = dave.join("porch", None).await;
    assert_eq!(members, ["dave"]);
    assert_eq!(seqs, [1]);
    let (members, _, _, _) = dave.join("den", None).await;
    assert_eq!(members, ["carol", "dave"]);
    hub.shutdown().await;
}

/// The bug this fixes: once `max_rooms` rooms had messages, no room could ever start
/// again, not even after a restart (every room was loaded at start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_rooms_than_max_rooms_over_time_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let hub1 = hub(&path, 3).await;
    let mut erin = Client::hello(&hub1, "erin").await;
    for r in 0..6 {
        let room = format!("r{r}");
        erin.join(&room, None).await;
        erin.post_acked(&room, &format!("first in {room}")).await;
        erin.leave(&room).await;
    }
    assert!(
        hub1.stats().rooms <= 3,
        "max_rooms bounds the rooms in memory"
    );
    // Three rooms someone is in fill the limit: a fourth cannot start.
    let mut others = Vec::new();
    for r in 0..3 {
        let mut c = Client::hello(&hub1, &format!("busy{r}")).await;
        c.join(&format!("busy{r}"), None).await;
        others.push(c);
    }
    let id = erin.id();
    erin.send(ClientFrame::Join(JoinRequest {
        id: Some(id),
        room: "r6".into(),
        since: None,
    }))
    .await;
    assert!(
        matches!(
            erin.answer(id).await,
            ServerFrame::Error {
                code: ErrorCode::LimitReached,
                ..
            }
        ),
        "the limit still holds for rooms in use"
    );
    drop(others);
    hub1.shutdown().await;

    let hub2 = hub(&path, 3).await;
    assert_eq!(hub2.stats().rooms, 0, "nothing is loaded at start");
    let mut erin = Client::hello(&hub2, "erin").await;
    let listed: Vec<String> = erin.rooms().await.into_iter().map(|r| r.0).collect();
    assert_eq!(listed, ["r0", "r1", "r2", "r3", "r4", "r5"]);
    erin.join("r7", None).await;
    assert_eq!(
        erin.post_acked("r7", "a new room after the restart").await,
        1
    );
    let (_, seqs, _, last) = erin.join("r0", None).await;
    assert_eq!((seqs, last), (vec![1], 1), "an old room loads on demand");
    assert_eq!(erin.post_acked("r0", "second in r0").await, 2);
    hub2.shutdown().await;
}
