//! How a client starts, and where it is in a connection's life.

/// How a [`Client`](super::Client) starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The user name to ask for in `hello`.
    pub name: String,
    /// A token from an earlier `welcome` (to be another session of that user), or host
    /// credentials.
    pub token: Option<String>,
    /// Rooms for the first `hello`; `None` lets the server join its default rooms.
    pub rooms: Option<Vec<String>>,
    /// Prefix of the client ids of this client's sends. Make it unique per process (for
    /// example from a random number): client ids must not repeat for the same user.
    pub client_id_prefix: String,
}

impl ClientConfig {
    /// A config with a name and a client-id prefix; the server's default rooms.
    #[must_use]
    pub fn new(name: impl Into<String>, client_id_prefix: impl Into<String>) -> ClientConfig {
        ClientConfig {
            name: name.into(),
            token: None,
            rooms: None,
            client_id_prefix: client_id_prefix.into(),
        }
    }
}

/// Where the client is in the connection's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// No connection.
    Offline,
    /// Connected, `hello` sent, no `welcome` yet.
    Greeting,
    /// Welcomed: commands go out as they are made.
    Ready,
}
