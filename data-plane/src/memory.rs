//! Giving freed memory back to the system.
//!
//! Applying a snapshot builds the new environment while the old one still serves, then drops
//! the old one: for the environments of `docs/BENCHMARKS.md` (10 000 keys, 1 000 functions,
//! 10 000 secrets) that frees tens of megabytes at once. glibc's allocator keeps most of it:
//! it returns memory to the system only from the top of a heap, and the freed blocks sit
//! below live ones. Measured there, a data plane that had applied four revisions of that
//! environment held 77 MB, and 61 MB right after a `malloc_trim(0)` (called from `gdb`). So
//! the data plane calls it after each applied snapshot, off the request path (on the config
//! sync task). Other allocators (musl, a non-glibc target) return memory themselves: nothing
//! is done there.

use std::time::Instant;

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
