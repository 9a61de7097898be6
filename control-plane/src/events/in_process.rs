//! Events from the data plane of `airlock dev`, over an in-process channel.

use airlock_shared::events::{DataPlaneMessage, GatewayEvent, KeyUse};
use airlock_shared::oauth::OAuthConnectionReport;
use async_trait::async_trait;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::{EventSource, ReceivedEvents, StopSignal, MAX_BATCH};

/// The receiving end of the channel the in-process data plane sends its events (and key
/// usage reports) into (`EventSink::InProcess(sender)`). Nothing to acknowledge: an event
/// received is held by the ingester until it is stored.
pub struct InProcessEvents {
    receiver: UnboundedReceiver<DataPlaneMessage>,
    /// Shutdown has begun: the channel is closed to senders and only drained.
    closed: bool,
}

impl InProcessEvents {
    /// A new channel: the sender for the data plane, the source for the ingester.
    pub fn channel() -> (UnboundedSender<DataPlaneMessage>, Self) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        (sender, Self::new(receiver))
    }

    /// Read from an existing channel.
    pub fn new(receiver: UnboundedReceiver<DataPlaneMessage>) -> Self {
        Self {
            receiver,
            closed: false,
        }
    }

    /// Add what is already waiting to the batch, up to [`MAX_BATCH`] messages.
    fn fill(&mut self, batch: &mut Batch) {
        for _ in 0..MAX_BATCH {
            match self.receiver.try_recv() {
                Ok(message) => batch.sort(message),
                Err(_) => break,
            }
        }
    }
}

#[async_trait]
impl EventSource for InProcessEvents {
    type Receipt = ();

    async fn receive(&mut self, stop: &mut StopSignal) -> Option<ReceivedEvents<()>> {
        let mut batch = Batch::default();
        if !self.closed {
            tokio::select! {
                // Events already sent are stored even when shutdown has begun.
                biased;
                message = self.receiver.recv() => match message {
                    Some(message) => batch.sort(message),
                    // Every sender is gone: nothing more can arrive.
                    None => return None,
                },
                _ = stop.stopped() => {
                    // Refuse new events; what is buffered is still returned below.
                    self.receiver.close();
                    self.closed = true;
                }
            }
        }
        self.fill(&mut batch);
        if batch.events.is_empty() && batch.key_usage.is_empty() && batch.oauth.is_empty() {
            // Closed and drained.
            return None;
        }
        Some(ReceivedEvents {
            events: batch.events,
            key_usage: batch.key_usage,
            oauth: batch.oauth,
            receipt: (),
        })
    }

    async fn acknowledge(&mut self, _receipt: ()) {}
}

/// Messages taken so far, by kind.
#[derive(Default)]
struct Batch {
    events: Vec<GatewayEvent>,
    key_usage: Vec<KeyUse>,
    oauth: Vec<OAuthConnectionReport>,
}

impl Batch {
    fn sort(&mut self, message: DataPlaneMessage) {
        match message {
            DataPlaneMessage::Event(event) => self.events.push(event),
            DataPlaneMessage::KeyUsage(report) => self.key_usage.extend(report.uses),
            DataPlaneMessage::OAuth(report) => self.oauth.push(report),
        }
    }
}
