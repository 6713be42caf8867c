//! Other tasks' way onto the one SSH session: [`HubChannels`] opens a channel of their
//! own on the live connection to the hub (the update check reads releases through the
//! hub's `sftp` subsystem), and fails at once while the tunnel is down rather than wait
//! for it. The supervisor publishes each session through [`ChannelSlot`] when it is up
//! and withdraws it when it ends.

use std::sync::Arc;
use std::time::Duration;

use russh::ChannelMsg;
use russh::client::Msg;
use tokio::sync::watch;

use super::LiveHandle;

/// Where the supervisor publishes the live session (kept in the tunnel's settings).
#[derive(Clone)]
pub struct ChannelSlot(Arc<watch::Sender<LiveHandle>>);

impl Default for ChannelSlot {
    fn default() -> Self {
        ChannelSlot(Arc::new(watch::channel(None).0))
    }
}

impl std::fmt::Debug for ChannelSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSlot")
            .field("up", &self.0.borrow().is_some())
            .finish()
    }
}

impl ChannelSlot {
    /// A handle for another task.
    pub fn handle(&self) -> HubChannels {
        HubChannels {
            live: self.0.subscribe(),
        }
    }

    pub(super) fn publish(&self, session: LiveHandle) {
        self.0.send_replace(session);
    }

    /// The live session as the local forward follows it.
    pub(super) fn subscribe(&self) -> watch::Receiver<LiveHandle> {
        self.0.subscribe()
    }
}

/// Why a channel could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("the tunnel to the hub is down")]
    Down,
    #[error("the hub did not open a channel within {0:?}")]
    Timeout(Duration),
    #[error("the hub refused the `{0}` subsystem")]
    Refused(String),
    #[error("the hub closed the channel: {0}")]
    Closed(String),
}

/// Opens channels of its own on the live session; cheap to clone.
#[derive(Clone)]
pub struct HubChannels {
    live: watch::Receiver<LiveHandle>,
}

impl HubChannels {
    /// Whether a session is up now.
    pub fn is_up(&self) -> bool {
        self.live.borrow().is_some()
    }

    /// Waits until a session is up (or the tunnel has stopped for good: `false`).
    pub async fn wait_up(&mut self) -> bool {
        self.live.wait_for(Option::is_some).await.is_ok()
    }

    /// Waits until the current session is gone (or the tunnel has stopped for good).
    pub async fn wait_down(&mut self) {
        let _ = self.live.wait_for(Option::is_none).await;
    }

    /// A session channel running the hub's subsystem `name`, within `timeout`; fails at
    /// once while the tunnel is down.
    pub async fn open_subsystem(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<russh::Channel<Msg>, ChannelError> {
        let handle = self.live.borrow().clone().ok_or(ChannelError::Down)?;
        let open = async {
            let mut channel = handle
                .channel_open_session()
                .await
                .map_err(|e| ChannelError::Closed(e.to_string()))?;
            channel
                .request_subsystem(true, name)
                .await
                .map_err(|e| ChannelError::Closed(e.to_string()))?;
            loop {
                match channel.wait().await {
                    Some(ChannelMsg::Success) => return Ok(channel),
                    Some(ChannelMsg::Failure) => {
                        let _ = channel.close().await;
                        return Err(ChannelError::Refused(name.to_owned()));
                    }
                    Some(ChannelMsg::Close | ChannelMsg::Eof) | None => {
                        return Err(ChannelError::Closed("before the subsystem started".into()));
                    }
                    Some(_) => {}
                }
            }
        };
        tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| ChannelError::Timeout(timeout))?
    }
}
