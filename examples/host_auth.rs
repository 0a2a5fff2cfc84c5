//! A host app that has its own accounts embeds the chat under `/chat`: a login form sets
//! a signed session cookie (HMAC, axum-extra's `SignedCookieJar`), the chat's identity
//! hook reads that cookie from the WebSocket upgrade request and says who the user is
//! (HTTP 401 without a valid one: no socket opens), and the app's roles become room
//! permissions:
//!
//! - `general`: open to everyone;
//! - `announcements`: read-only, only `admin`s post;
//! - `staff`: private to `staff` (others do not even see it listed).
//!
//! and the app's roles also become room roles (a [`RoomPolicy::role`] answer, asked by
//! the engine whenever a role matters, so nobody has to set them first):
//!
//! - `admin` → owner of every room (sets the topic, slow mode and roles, moderates);
//! - `moderator` → moderator of every room (kicks, bans, mutes, sets the topic);
//! - anyone else → member, or what the room's owners made them (the user who creates a
//!   room owns it).
//!
//! The chat page asks no name: the user is the one logged in. Signing out in the app ends
//! the user's chat sessions everywhere (`Hub::revoke_user`); a session cookie that
//! expires ends them too (`Identity::expires`).
//!
//! Run with:
//!
//! ```text
//! cargo run --example host_auth -- --addr 127.0.0.1:3000
//! ```
//!
//! Demo accounts (the password is the user name): `alice` (admin, staff), `bob` (staff),
//! `carol` (no role), `dave` (moderator). The signing key is drawn at each start, so a restart signs
//! everyone out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{FromRef, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use axum_extra::extract::cookie::{Cookie, Key, SameSite, SignedCookieJar};
use chat_axum::{ConnectRefused, ConnectRequest, RouterOptions, identity_hook};
use chat_core::protocol::Role;
use chat_core::runtime::{Hub, HubConfig};
use chat_core::{Identity, Permissions, RoomAccess, RoomName, RoomPolicy, SharedPolicy};
use chrono::{DateTime, Utc};
use clap::Parser;
use subtle::ConstantTimeEq as _;

/// The session cookie's name.
const SESSION: &str = "session";

#[derive(Parser)]
struct Args {
    /// Address to listen on (port 0: any free port; the first line printed says which).
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// How long a login lasts, in seconds: the chat session ends with it.
    #[arg(long, default_value_t = 8 * 3600)]
    session_secs: i64,
}

/// The app's accounts: user name, password, roles. A real app has a database.
const ACCOUNTS: &[(&str, &str, &[&str])] = &[
    ("alice", "alice", &["admin", "staff"]),
    ("bob", "bob", &["staff"]),
    ("carol", "carol", &[]),
    ("dave", "dave", &["moderator"]),
];

/// The app's roles as room roles, in every public room: the engine asks this whenever a
/// role matters (a moderation frame, `joined.role`) and a user holds the higher of this
/// answer and the role given in the room itself (by an owner, or as its creator).
/// Permissions stay the room rules' (`announcements`, `staff` above).
struct AppRoles;

impl RoomPolicy for AppRoles {
    fn permissions(&self, _who: &Identity, _room: &RoomName, rules: Permissions) -> Permissions {
        rules
    }

    fn role(&self, who: &Identity, _room: &RoomName) -> Option<Role> {
        if who.roles.contains("admin") {
            Some(Role::Owner)
        } else if who.roles.contains("moderator") {
            Some(Role::Moderator)
        } else {
            None // a member, unless the room says more
        }
    }
}

fn roles_of(user: &str) -> Option<&'static [&'static str]> {
    ACCOUNTS
        .iter()
        .find(|(name, _, _)| *name == user)
        .map(|(_, _, roles)| *roles)
}

#[derive(Clone)]
struct App {
    key: Key,
    hub: Hub,
    session: chrono::Duration,
}

impl FromRef<App> for Key {
    fn from_ref(app: &App) -> Key {
        app.key.clone()
    }
}

/// A logged-in user as the cookie says: `name|expiry (unix seconds)`, signed, so it
/// cannot be forged or edited.
struct Session {
    user: String,
    expires: DateTime<Utc>,
}

impl Session {
    fn from_jar(jar: &SignedCookieJar) -> Option<Session> {
        let cookie = jar.get(SESSION)?;
        let (user, expires) = cookie.value().split_once('|')?;
        let expires = DateTime::from_timestamp(expires.parse().ok()?, 0)?;
        #[allow(clippy::disallowed_methods)] // the app reads the clock
        let live = expires > Utc::now();
        (live && roles_of(user).is_some()).then(|| Session {
            user: user.to_owned(),
            expires,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = HubConfig::default();
    config.core.default_rooms = vec!["general".into(), "announcements".into()];
    config.core.rooms = vec![
        ("announcements".into(), RoomAccess::read_only(["admin"])),
        ("staff".into(), RoomAccess::private(["staff"])),
    ];
    config.core.room_policy = Some(SharedPolicy::new(AppRoles));
    let hub = Hub::spawn(config).await?;
    let key = Key::generate();

    // Who a WebSocket is: the signed session cookie of its upgrade request.
    let hook_key = key.clone();
    let identify = identity_hook(move |req: ConnectRequest| {
        let jar = SignedCookieJar::from_headers(&req.headers, hook_key.clone());
        async move {
            let session = Session::from_jar(&jar)
                .ok_or_else(|| ConnectRefused::Unauthorized("log in first".into()))?;
            let roles = roles_of(&session.user).unwrap_or_default();
            let mut identity = Identity::new(session.user).expiring(session.expires);
            identity.roles = roles.iter().map(|r| (*r).to_owned()).collect();
            Ok(identity)
        }
    });
    let chat = chat_axum::router(
        hub.clone(),
        RouterOptions {
            identity: Some(identify),
            ..RouterOptions::default()
        },
    );

    let app = App {
        key,
        hub: hub.clone(),
        session: chrono::Duration::seconds(args.session_secs),
    };
    let router = Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .with_state(app)
        .merge(chat_axum::mount("/chat", chat));

    let listener = chat_axum::bind(args.addr)?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    chat_core::runtime::shutdown_within(&hub, Duration::from_secs(10)).await;
    Ok(())
}

/// The app's home: the login form, or a link to the chat.
async fn home(jar: SignedCookieJar) -> Html<String> {
    let body = match Session::from_jar(&jar) {
        Some(s) => format!(
            r#"<p>Signed in as <b data-testid="app-user">{user}</b> ({roles}).</p>
<p><a href="/chat" data-testid="open-chat">Open the chat</a></p>
<form method="post" action="/logout"><button data-testid="app-logout">Sign out</button></form>"#,
            user = s.user,
            roles = roles_of(&s.user).unwrap_or_default().join(", "),
        ),
        None => r#"<form method="post" action="/login">
<label>User <input name="user" data-testid="app-user-name" autocomplete="username"></label>
<label>Password <input name="password" type="password" data-testid="app-password"></label>
<button data-testid="app-login">Sign in</button>
</form>
<p>Demo accounts: alice, bob, carol; the password is the name.</p>"#
            .to_owned(),
    };
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>Host app</title><h1>Host app</h1>{body}"
    ))
}

async fn login(
    State(app): State<App>,
    jar: SignedCookieJar,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |k: &str| form.get(k).map_or("", String::as_str);
    let user = field("user");
    // The password in constant time (subtle), and every account checked, so that the
    // answer's timing tells nothing about how much of a guess is right.
    let given = field("password").as_bytes();
    let known = ACCOUNTS.iter().fold(false, |known, (name, password, _)| {
        let right = bool::from(password.as_bytes().ct_eq(given));
        known | (*name == user && right)
    });
    if !known {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            Html("<p>Wrong user or password. <a href=\"/\">Try again</a></p>"),
        )
            .into_response();
    }
    #[allow(clippy::disallowed_methods)] // the app reads the clock
    let expires = Utc::now() + app.session;
    let mut cookie = Cookie::new(SESSION, format!("{user}|{}", expires.timestamp()));
    cookie.set_http_only(true);
    cookie.set_same_site(SameSite::Lax);
    cookie.set_path("/");
    (jar.add(cookie), Redirect::to("/chat")).into_response()
}

/// Signs out here and in the chat: every chat session of the user ends now.
async fn logout(State(app): State<App>, jar: SignedCookieJar) -> Response {
    if let Some(session) = Session::from_jar(&jar) {
        let _ = app.hub.revoke_user(&session.user).await;
    }
    let gone = Cookie::build(SESSION).path("/");
    (jar.remove(gone), Redirect::to("/")).into_response()
}
