//! Events from the data plane of `airlock dev`, over an in-process channel.

use airlock_shared::events::GatewayEvent;
use async_trait::async_trait;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::{EventSource, ReceivedEvents, StopSignal, MAX_BATCH};

/// The receiving end of the channel the in-process data plane sends its events into
/// (`EventSink::InProcess(sender)`). Nothing to acknowledge: an event received is held by the
/// ingester until it is stored.
pub struct InProcessEvents {
    receiver: UnboundedReceiver<GatewayEvent>,
    /// Shutdown has begun: the channel is closed to senders and only drained.
    closed: bool,
}

impl InProcessEvents {
    /// A new channel: the sender for the data plane, the source for the ingester.
    pub fn channel() -> (UnboundedSender<GatewayEvent>, Self) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        (sender, Self::new(receiver))
    }

    /// Read from an existing channel.
    pub fn new(receiver: UnboundedReceiver<GatewayEvent>) -> Self {
        Self {
            receiver,
            closed: false,
        }
    }

    /// Add what is already waiting to `batch`, up to [`MAX_BATCH`].
    fn fill(&mut self, batch: &mut Vec<GatewayEvent>) {
        while batch.len() < MAX_BATCH {
            match self.receiver.try_recv() {
                Ok(event) => batch.push(event),
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
        if !self.closed {
            tokio::select! {
                // Events already sent are stored even when shutdown has begun.
                biased;
                event = self.receiver.recv() => match event {
                    Some(event) => events.push(event),
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
        self.fill(&mut events);
        if events.is_empty() {
            // Closed and drained.
            return None;
        }
        Some(ReceivedEvents {
            events,
            receipt: (),
        })
    }

    async fn acknowledge(&mut self, _receipt: ()) {}
}
