//! Heartbeats: a REP socket that echoes every ping, and a REQ client that measures whether the
//! other end still answers.

use std::time::Duration;

use bytes::Bytes;

use crate::socket::{self, Driven, Limits};
use crate::NetError;

/// A ping is a few bytes; anything much larger is not one.
const PING_LIMIT: Limits = Limits { max_frame: 1024 };

/// Binds a heartbeat REP socket that echoes each ping back unchanged, for as long as the process
/// runs. Returns the resolved endpoint.
pub async fn bind_heartbeat(endpoint: &str) -> Result<String, NetError> {
    let socket = socket::new_socket(zmq::REP, PING_LIMIT)?;
    let bound = socket::bind(&socket, endpoint)?;
    let mut driven = Driven::new(socket)?;
    tokio::spawn(async move {
        loop {
            match driven.recv().await {
                Ok(ping) => {
                    if let Err(error) = driven.send(ping).await {
                        tracing::debug!(%error, "heartbeat echo failed");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "heartbeat socket failed; no longer echoing");
                    return;
                }
            }
        }
    });
    Ok(bound)
}

/// A heartbeat client: pings a REP endpoint and says whether an echo came back in time.
///
/// A REQ socket whose reply never came is stuck (it cannot send again), so after a missed beat the
/// socket is recreated.
pub struct Heartbeat {
    endpoint: String,
    socket: Option<Driven>,
    connect_timeout: Duration,
}

impl Heartbeat {
    /// A client for `endpoint`; it connects on the first beat.
    pub fn new(endpoint: impl Into<String>, connect_timeout: Duration) -> Self {
        Heartbeat {
            endpoint: endpoint.into(),
            socket: None,
            connect_timeout,
        }
    }

    /// Sends one ping and waits up to `timeout` for its echo.
    pub async fn beat(&mut self, timeout: Duration) -> bool {
        let outcome = tokio::time::timeout(timeout, self.try_beat()).await;
        match outcome {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::debug!(endpoint = %self.endpoint, %error, "heartbeat failed");
                self.socket = None;
                false
            }
            Err(_) => {
                self.socket = None;
                false
            }
        }
    }

    async fn try_beat(&mut self) -> Result<(), NetError> {
        let socket = match &mut self.socket {
            Some(socket) => socket,
            slot => {
                let socket = socket::new_socket(zmq::REQ, PING_LIMIT)?;
                socket::connect(&socket, &self.endpoint, self.connect_timeout)?;
                slot.insert(Driven::new(socket)?)
            }
        };
        socket.send(vec![Bytes::from_static(b"ping")]).await?;
        socket.recv().await?;
        Ok(())
    }
}
