//! `airlock dev`: the data plane, in this process, fed snapshots through a channel.

use std::net::SocketAddr;
use std::path::PathBuf;

use airlock_data_plane::{
    ConfigSource, DataPlaneConfig, DataPlaneHandle, EventSink, SnapshotDelivery,
};
use airlock_shared::seal::OpeningKey;
use anyhow::Context;
use tokio::sync::mpsc::UnboundedReceiver;

/// Worker threads for the in-process data plane: enough for local development.
const DEV_DATA_PLANE_THREADS: usize = 2;

/// Start the data plane on `listen`. Returns once it accepts connections.
pub(crate) async fn start_data_plane(
    listen: SocketAddr,
    opening_key: OpeningKey,
    snapshots: UnboundedReceiver<SnapshotDelivery>,
    upstream_ca_file: Option<PathBuf>,
    events: EventSink,
) -> anyhow::Result<DataPlaneHandle> {
    let config = DataPlaneConfig {
        listen,
        opening_keys: opening_key.into(),
        source: ConfigSource::InProcess(snapshots),
        events,
        threads: DEV_DATA_PLANE_THREADS,
        upstream_ca_file,
    };
    // `spawn` blocks until the listener is up (it polls with sleeps).
    tokio::task::spawn_blocking(move || airlock_data_plane::spawn(config))
        .await
        .context("the data plane startup task failed")?
        .context("cannot start the data plane")
}

/// Stop the data plane, letting in-flight invocations finish.
pub(crate) async fn stop_data_plane(handle: DataPlaneHandle) {
    if tokio::task::spawn_blocking(move || handle.shutdown())
        .await
        .is_err()
    {
        tracing::error!("the data plane shutdown task failed");
    }
}
