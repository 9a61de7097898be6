//! Giving freed memory back to the system.
//!
//! Applying a snapshot builds the new environment while the old one still serves, then drops
//! the old one: for the environments of `docs/BENCHMARKS.md` (10 000 keys, 1 000 functions,
//! 10 000 secrets) that frees tens of megabytes at once. glibc's allocator keeps most of it:
//! it returns memory to the system only from the top of a heap, and the freed blocks sit
//! below live ones. Measured there, a data plane that had applied four revisions of that
//! environment held 77 MB, and 61 MB right after a `malloc_trim(0)` (called from `gdb`). So
//! the data plane calls it off the request path (on the config sync task), once applying
//! snapshots has been quiet for a moment ([`TrimSchedule`]). Other allocators (musl, a
//! non-glibc target) return memory themselves: nothing is done there.
//!
//! Not after every applied snapshot: `malloc_trim` gives back every whole free page of every
//! arena (its `pad` only keeps memory at the top of the main heap, and the sync task allocates
//! in a thread arena), so the next snapshot faults all of its memory in again, about 3 300
//! page faults for that environment. A burst of snapshots (a data plane's start with many
//! environments, a script making many changes, the benchmark's ten republishes) is decoded
//! and compiled in memory the previous one freed, and trimmed once at its end.

use std::time::Instant;

use tokio::time::Duration;

/// How long no snapshot must have been applied before freed memory is returned.
pub(crate) const TRIM_WHEN_QUIET_FOR: Duration = Duration::from_secs(1);

/// The longest freed memory is kept while snapshots keep coming (a trim every so often, even
/// if the config never stays quiet for [`TRIM_WHEN_QUIET_FOR`]).
pub(crate) const TRIM_AT_LEAST_EVERY: Duration = Duration::from_secs(10);

/// When the next trim is due, if one is: [`TRIM_WHEN_QUIET_FOR`] after the last applied
/// snapshot, or [`TRIM_AT_LEAST_EVERY`] after the first one not yet trimmed after, whichever
/// comes first.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TrimSchedule {
    /// The first applied snapshot since the last trim, and the last one.
    pending: Option<(tokio::time::Instant, tokio::time::Instant)>,
}

impl TrimSchedule {
    /// A snapshot was applied at `now`: what it replaced (and what decoding it left) is freed.
    pub(crate) fn applied(&mut self, now: tokio::time::Instant) {
        let first = self.pending.map_or(now, |(first, _)| first);
        self.pending = Some((first, now));
    }

    /// When the trim is due; `None` when nothing was applied since the last one.
    pub(crate) fn due(&self) -> Option<tokio::time::Instant> {
        self.pending
            .map(|(first, last)| (last + TRIM_WHEN_QUIET_FOR).min(first + TRIM_AT_LEAST_EVERY))
    }

    /// Resolves when the trim is due (never, when none is). Holds no borrow: select on it
    /// beside work that changes the schedule, then call [`Self::trim`].
    pub(crate) fn wait(&self) -> impl std::future::Future<Output = ()> + use<> {
        let due = self.due();
        async move {
            match due {
                Some(due) => tokio::time::sleep_until(due).await,
                None => std::future::pending().await,
            }
        }
    }

    /// Return freed memory now, and forget what was pending.
    pub(crate) fn trim(&mut self) {
        self.pending = None;
        release_freed();
    }
}

/// Ask the allocator to return free memory to the system (glibc's `malloc_trim(0)`: every
/// arena, every whole free page). Takes a few milliseconds on a heap of that size.
pub(crate) fn release_freed() {
    let started = Instant::now();
    let released = trim();
    tracing::debug!(
        released,
        elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        "returned freed memory to the system"
    );
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and has no precondition; glibc takes each arena's
    // lock while it works, as `malloc` and `free` do.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_is_due_once_quiet_and_at_the_latest_after_a_while() {
        let start = tokio::time::Instant::now();
        let mut schedule = TrimSchedule::default();
        assert_eq!(schedule.due(), None);
        schedule.applied(start);
        assert_eq!(schedule.due(), Some(start + TRIM_WHEN_QUIET_FOR));
        // Each snapshot of a burst pushes it back...
        let half = TRIM_WHEN_QUIET_FOR / 2;
        let mut now = start;
        while now + half < start + TRIM_AT_LEAST_EVERY {
            now += half;
            schedule.applied(now);
        }
        // ...but never past the bound from the first one.
        assert_eq!(schedule.due(), Some(start + TRIM_AT_LEAST_EVERY));
        schedule.pending = None;
        assert_eq!(schedule.due(), None);
    }

    #[tokio::test]
    async fn waiting_resolves_when_due_and_never_without_a_snapshot() {
        let mut schedule = TrimSchedule::default();
        let nothing = tokio::time::timeout(Duration::from_millis(50), schedule.wait()).await;
        assert!(nothing.is_err(), "no trim without an applied snapshot");
        let applied = tokio::time::Instant::now();
        schedule.applied(applied);
        schedule.wait().await;
        assert!(applied.elapsed() >= TRIM_WHEN_QUIET_FOR);
        schedule.trim();
        assert_eq!(schedule.due(), None);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_goes_back_to_the_system() {
        fn rss_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        // Many small blocks (below glibc's mmap threshold, so they live in the heap), the
        // last one kept: the freed ones lie below it, where glibc does not return them.
        let mut blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 4096]).collect();
        let keep = blocks.pop();
        drop(blocks);
        let before = rss_kib();
        release_freed();
        let after = rss_kib();
        drop(keep);
        // 80 MB were freed; most of it must be gone from the resident set.
        assert!(
            before.saturating_sub(after) > 40_000,
            "RSS {before} KiB before, {after} KiB after"
        );
    }
}
