//! Memory of a large compiled environment (10 000 API keys, 1 000 functions, 10 000 sealed
//! secrets): the data plane's resident set size before and after applying it.
//!
//! ```text
//! cargo run --release -p airlock-data-plane --example large_environment_rss
//! ```
//!
//! The snapshot is built and encoded first (the binary encoding control planes publish), then
//! decoded and applied as the data plane does with what it reads from Redis; `VmRSS` (from
//! `/proc/self/status`, Linux only) is printed after each step. No secret value is printed.

use std::time::Instant;

use airlock_data_plane::snapshot::SnapshotStore;
use airlock_shared::seal::OpeningKey;
use airlock_shared::wire::{decode_snapshot, SnapshotEncoding};

#[path = "../benches/support/large_environment.rs"]
mod large_environment;

/// A field of `/proc/self/status` (`VmRSS`: resident now, `VmHWM`: peak resident).
fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
                .map(|value| value.trim().to_string())
        })
        .unwrap_or_else(|| "unknown (no /proc/self/status)".to_string())
}

fn main() {
    println!("VmRSS at start: {}", status("VmRSS"));
    let key = OpeningKey::generate();
    let encoding = SnapshotEncoding::default();
    let bytes = encoding
        .encode(&large_environment::large_environment(&key))
        .expect("encodes");
    println!("snapshot ({encoding}): {} bytes", bytes.len());
    println!("VmRSS with the encoded snapshot held: {}", status("VmRSS"));

    let store = SnapshotStore::new(key.into());
    let snapshot = decode_snapshot(&bytes).expect("decodes");
    let started = Instant::now();
    store.apply(snapshot);
    let applied = started.elapsed();
    drop(bytes);
    println!("applied in {} ms", applied.as_millis());
    println!(
        "VmRSS with the environment applied (encoded snapshot dropped): {}",
        status("VmRSS")
    );

    // The first use of the 1 000 secrets the functions inject (each opened, its forms and
    // automaton built and cached), as requests would.
    let environment = store
        .load()
        .environment(&large_environment::ENVIRONMENT)
        .expect("applied")
        .clone();
    let started = Instant::now();
    let opened = (0..large_environment::FUNCTIONS)
        .map(|i| large_environment::secret_name(i * 10))
        .filter(|name| environment.secret(name).is_some())
        .count();
    println!(
        "first use of {opened} secrets in {} ms",
        started.elapsed().as_millis()
    );
    println!(
        "VmRSS with those {opened} secrets opened: {}",
        status("VmRSS")
    );
    println!("VmHWM (peak): {}", status("VmHWM"));
    drop(store);
}
