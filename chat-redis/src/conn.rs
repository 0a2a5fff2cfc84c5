//! The command connection: redis' `ConnectionManager`, replaced when a call times out.
//!
//! `ConnectionManager` reconnects when the connection is dropped or fails with an I/O
//! error, but not after a timeout: a connection whose bytes stop flowing while its socket
//! stays open (a dead NAT entry, a stuck load balancer, a failover behind a proxy) would
//! time out every call for ever. So a timeout starts a new connection in the background;
//! calls use it once it is made (the old one is dropped with its last user).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A cheap-to-clone handle; clones share the connection and its replacements.
#[derive(Clone)]
pub(crate) struct Conn {
    shared: Arc<Shared>,
    /// The connection this handle uses, and its generation.
    current: ConnectionManager,
    generation: u64,
}

struct Shared {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// The newest connection and its generation.
    slot: Mutex<(u64, ConnectionManager)>,
    /// A replacement is being made.
    replacing: AtomicBool,
}

impl Conn {
    pub(crate) async fn connect(
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> redis::RedisResult<Conn> {
        let current = client
            .get_connection_manager_with_config(config.clone())
            .await?;
        Ok(Conn {
            shared: Arc::new(Shared {
                client,
                config,
                slot: Mutex::new((0, current.clone())),
                replacing: AtomicBool::new(false),
            }),
            current,
            generation: 0,
        })
    }

    /// Takes the newest connection if one was made since this handle's.
    fn refresh(&mut self) {
        let slot = self.shared.slot.lock().expect("not poisoned");
        if slot.0 != self.generation {
            self.generation = slot.0;
            self.current = slot.1.clone();
        }
    }

    /// After a timeout on this handle's connection: make a new one, once.
    fn replace(&self) {
        let shared = self.shared.clone();
        let seen = self.generation;
        if shared.slot.lock().expect("not poisoned").0 != seen
            || shared.replacing.swap(true, Ordering::SeqCst)
        {
            return;
        }
        tokio::spawn(async move {
            match shared
                .client
                .get_connection_manager_with_config(shared.config.clone())
                .await
            {
                Ok(fresh) => {
                    let mut slot = shared.slot.lock().expect("not poisoned");
                    *slot = (slot.0 + 1, fresh);
                    tracing::info!("redis command connection replaced after a timeout");
                }
                Err(e) => tracing::warn!(error = %e, "replacing the redis connection failed"),
            }
            shared.replacing.store(false, Ordering::SeqCst);
        });
    }

    fn after<T>(&self, result: &redis::RedisResult<T>) {
        if let Err(e) = result
            && e.is_timeout()
        {
            self.replace();
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            self.refresh();
            let result = self.current.send_packed_command(cmd).await;
            self.after(&result);
            result
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        async move {
            self.refresh();
            let result = self
                .current
                .send_packed_commands(pipeline, offset, count)
                .await;
            self.after(&result);
            result
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.current.get_db()
    }
}
