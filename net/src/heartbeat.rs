//! Heartbeats: a REP socket that echoes every ping, and a REQ client that measures whether the
//! other end still answers.

use std::time::Duration;

use zeromq::{Socket, SocketOptions, SocketRecv, SocketSend};

use crate::NetError;

/// Binds a heartbeat REP socket that echoes each ping back unchanged, for as long as the process
/// runs. Returns the resolved endpoint.
pub async fn bind_heartbeat(endpoint: &str) -> Result<String, NetError> {
    let mut socket = zeromq::RepSocket::new();
    let bound = socket
        .bind(endpoint)
        .await
        .map_err(|source| NetError::Bind {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    tokio::spawn(async move {
        loop {
            match socket.recv().await {
                Ok(ping) => {
                    if let Err(error) = socket.send(ping).await {
                        tracing::debug!(%error, "heartbeat echo failed");
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "heartbeat receive failed");
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    Ok(bound.to_string())
}

/// A heartbeat client: pings a REP endpoint and says whether an echo came back in time.
///
/// A REQ socket whose reply never came is stuck (it cannot send again), so after a missed beat the
/// socket is recreated.
pub struct Heartbeat {
    endpoint: String,
    socket: Option<zeromq::ReqSocket>,
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
                let mut options = SocketOptions::default();
                options.connect_timeout(self.connect_timeout);
                let mut socket = zeromq::ReqSocket::with_options(options);
                socket
                    .connect(&self.endpoint)
                    .await
                    .map_err(|source| NetError::Connect {
                        endpoint: self.endpoint.clone(),
                        source,
                    })?;
                slot.insert(socket)
            }
        };
        let ping = zeromq::ZmqMessage::from(b"ping".to_vec());
        let endpoint = || self.endpoint.clone();
        socket
            .send(ping)
            .await
            .map_err(|source| NetError::Connect {
                endpoint: endpoint(),
                source,
            })?;
        socket
            .recv()
            .await
            .map(|_| ())
            .map_err(|source| NetError::Connect {
                endpoint: endpoint(),
                source,
            })
    }
}
