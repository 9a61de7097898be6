//! The data plane's log output: stderr, with the access log written in batches.
//!
//! At the default `RUST_LOG=info` the data plane logs one `airlock::access` line per request.
//! Written one `write(2)` each, on the worker's thread, they cost about 3.5 µs of CPU per
//! request on top of formatting them (`docs/BENCHMARKS.md`). [`LogWriter`] keeps access lines
//! in a buffer and writes it out when it reaches [`FLUSH_BYTES`], every [`FLUSH_INTERVAL`]
//! (a background thread), before any other line, and at [`LogWriter::flush`] (shutdown), as
//! nginx's `access_log ... buffer=` does. Every other line (any target but the access log,
//! and any line at `WARN` or above) is written at once, after what is buffered, so the
//! output keeps its order. A process killed without shutting down loses at most the last
//! [`FLUSH_INTERVAL`] of access lines.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Target of the per-request access log lines (`proxy::Gateway::logging`).
pub const ACCESS_LOG_TARGET: &str = "airlock::access";
/// Buffered access lines are written out once they reach this size (about 200 lines).
pub const FLUSH_BYTES: usize = 64 * 1024;
/// ... and at the latest this long after they were logged.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// A [`MakeWriter`] for `tracing_subscriber::fmt` that batches access log lines (module docs).
#[derive(Clone)]
pub struct LogWriter {
    output: Arc<Mutex<Output>>,
}

/// Held access lines and where they go; one lock, so lines reach the sink in the order they
/// were logged.
struct Output {
    pending: Vec<u8>,
    sink: Box<dyn Write + Send>,
}

impl Output {
    /// Write what is held, then `line`. A failing stderr has nowhere to be reported: the
    /// lines are dropped, as `eprintln!` would drop them.
    fn write_out(&mut self, line: &[u8]) {
        if self.pending.is_empty() && line.is_empty() {
            return;
        }
        let _ = self.sink.write_all(&self.pending);
        let _ = self.sink.write_all(line);
        let _ = self.sink.flush();
        self.pending.clear();
    }
}

impl LogWriter {
    /// Writing to stderr, flushed every [`FLUSH_INTERVAL`] by a background thread.
    pub fn stderr() -> Self {
        Self::flushed_every(Box::new(io::stderr()), FLUSH_INTERVAL)
    }

    /// Writing to `sink`, flushed every `interval` by a background thread (for the life of
    /// the process).
    fn flushed_every(sink: Box<dyn Write + Send>, interval: Duration) -> Self {
        let writer = Self::new(sink);
        let flusher = writer.clone();
        std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                flusher.flush();
            })
            .expect("cannot start the log flushing thread");
        writer
    }

    /// Writing to `sink`, without a flushing thread (tests call [`LogWriter::flush`]).
    fn new(sink: Box<dyn Write + Send>) -> Self {
        Self {
            output: Arc::new(Mutex::new(Output {
                pending: Vec::with_capacity(FLUSH_BYTES),
                sink,
            })),
        }
    }

    /// Write out what is held.
    pub fn flush(&self) {
        lock(&self.output).write_out(&[]);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One log line on its way: `tracing_subscriber::fmt` formats a whole event, then writes it
/// with one `write_all`.
pub struct LogLine<'a> {
    writer: &'a LogWriter,
    held: bool,
}

impl Write for LogLine<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut output = lock(&self.writer.output);
        if self.held && output.pending.len() + line.len() < FLUSH_BYTES {
            output.pending.extend_from_slice(line);
        } else {
            output.write_out(line);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogLine {
            writer: self,
            held: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        LogLine {
            writer: self,
            held: meta.target() == ACCESS_LOG_TARGET && *meta.level() > Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// A sink the test can read, counting the writes that reach it.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.bytes).extend_from_slice(buf);
            *lock(&self.writes) += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(lock(&self.bytes).clone()).unwrap()
        }
    }

    fn subscriber(writer: LogWriter) -> impl tracing::Subscriber {
        tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(false)
                .without_time(),
        )
    }

    #[test]
    fn access_lines_wait_for_a_flush_and_other_lines_keep_the_order() {
        let sink = Sink::default();
        let writer = LogWriter::new(Box::new(sink.clone()));
        tracing::subscriber::with_default(subscriber(writer.clone()), || {
            tracing::info!(target: "airlock::access", request_id = "r1", "request");
            tracing::info!(target: "airlock::access", request_id = "r2", "request");
            assert_eq!(sink.text(), "", "access lines are held");
            // Any other line writes what is held first, then itself.
            tracing::info!(target: "airlock_data_plane::sync", "snapshot applied");
            let text = sink.text();
            let order: Vec<usize> = ["r1", "r2", "snapshot applied"]
                .iter()
                .map(|needle| text.find(needle).expect(needle))
                .collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");

            tracing::info!(target: "airlock::access", request_id = "r3", "request");
            assert!(!sink.text().contains("r3"));
            // An access line at WARN is not held.
            tracing::warn!(target: "airlock::access", request_id = "r4", "request");
            let text = sink.text();
            assert!(
                text.find("r3").unwrap() < text.find("r4").unwrap(),
                "{text}"
            );

            tracing::info!(target: "airlock::access", request_id = "r5", "request");
        });
        writer.flush();
        assert!(sink.text().contains("r5"));
        writer.flush();
        assert_eq!(sink.text().matches("request_id").count(), 5);
    }

    #[test]
    fn a_full_buffer_is_written_in_one_go() {
        let sink = Sink::default();
        let writer = LogWriter::new(Box::new(sink.clone()));
        let lines = 2_000;
        tracing::subscriber::with_default(subscriber(writer.clone()), || {
            for i in 0..lines {
                tracing::info!(target: "airlock::access", request_id = i, "request");
            }
        });
        writer.flush();
        let text = sink.text();
        assert_eq!(text.lines().count(), lines);
        assert!(
            text.lines()
                .all(|line| line.contains("request request_id=")),
            "{text}"
        );
        // Each write carries whole lines: FLUSH_BYTES of them at a time, then the rest.
        let writes = *lock(&sink.writes);
        let expected = text.len().div_ceil(FLUSH_BYTES);
        assert!(
            (expected..=2 * expected + 2).contains(&writes),
            "{writes} writes for {} bytes",
            text.len()
        );
    }

    #[test]
    fn the_flushing_thread_writes_held_lines_out() {
        let sink = Sink::default();
        let writer = LogWriter::flushed_every(Box::new(sink.clone()), Duration::from_millis(20));
        tracing::subscriber::with_default(subscriber(writer.clone()), || {
            tracing::info!(target: "airlock::access", request_id = "r1", "request");
        });
        // No other line and no explicit flush: the thread writes it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !sink.text().contains("r1") {
            assert!(std::time::Instant::now() < deadline, "never flushed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
