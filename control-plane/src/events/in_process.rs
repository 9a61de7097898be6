//! Events from the data plane of `airlock dev`, over an in-process channel.

use airlock_shared::events::{DataPlaneMessage, GatewayEvent, KeyUse};
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
    fn fill(&mut self, batch: &mut Vec<GatewayEvent>, key_usage: &mut Vec<KeyUse>) {
        for _ in 0..MAX_BATCH {
            match self.receiver.try_recv() {
                Ok(message) => sort(message, batch, key_usage),
                Err(_) => break,
            }
        }
    }
}

#[async_trait]
impl EventSource for InProcessEvents {
    type Receipt = ();

    async fn receive(&mut self, stop: &mut StopSignal) -> Option<ReceivedEvents<()>> {
        let mut events = Vec::new();
        let mut key_usage = Vec::new();
        if !self.closed {
            tokio::select! {
                // Events already sent are stored even when shutdown has begun.
                biased;
                message = self.receiver.recv() => match message {
                    Some(message) => sort(message, &mut events, &mut key_usage),
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
        self.fill(&mut events, &mut key_usage);
        if events.is_empty() && key_usage.is_empty() {
            // Closed and drained.
            return None;
        }
        Some(ReceivedEvents {
            events,
            key_usage,
            receipt: (),
        })
    }

    async fn acknowledge(&mut self, _receipt: ()) {}
}

fn sort(message: DataPlaneMessage, events: &mut Vec<GatewayEvent>, key_usage: &mut Vec<KeyUse>) {
    match message {
        DataPlaneMessage::Event(event) => events.push(event),
        DataPlaneMessage::KeyUsage(report) => key_usage.extend(report.uses),
        DataPlaneMessage::OAuth(_) => {}
    }
}
