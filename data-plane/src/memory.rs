//! Freeing what the request path no longer uses, and giving freed memory back to the system.
//!
//! ## The reclaimer
//!
//! Applying a snapshot builds the new environment while the old one still serves, then
//! replaces it. Dropping the replaced environment of `docs/BENCHMARKS.md` (10 000 keys, 1 000
//! functions, 10 000 secrets) frees tens of megabytes in hundreds of thousands of `free`
//! calls, and whoever drops the last reference pays for it: the config sync task, or a
//! request that still held the old snapshot when it was replaced. Where the data plane's
//! threads share a CPU (one pinned core, as the benchmark runs it), that CPU time is taken
//! from the workers right after each change, as latency. So a replaced snapshot, and the
//! environment it replaced, go to the [`Reclaimer`]: a thread of its own under Linux's
//! `SCHED_IDLE` policy (it runs only when no other thread wants the CPU) that drops each once
//! nothing else holds it, and that returns freed memory to the system. The secret values of a
//! replaced environment are zeroized there, when it is dropped.
//!
//! ## Returning memory
//!
//! glibc's allocator keeps most of what a replaced environment frees: it returns memory to the
//! system only from the top of a heap, and the freed blocks sit below live ones. Measured
//! there, a data plane that had applied four revisions of that environment held 77 MB, and
//! 61 MB right after a `malloc_trim(0)` (called from `gdb`). So the reclaimer calls it, once
//! applying snapshots has been quiet for a moment ([`TrimSchedule`]). Other allocators (musl,
//! a non-glibc target) return memory themselves: nothing is done there.
//!
//! Not after every applied snapshot: `malloc_trim` gives back every whole free page of every
//! arena (its `pad` only keeps memory at the top of the main heap, and the sync task allocates
//! in a thread arena), so the next snapshot faults all of its memory in again, about 3 300
//! page faults for that environment. A burst of snapshots (a data plane's start with many
//! environments, a script making many changes, the benchmark's ten republishes) is decoded
//! and compiled in memory the previous one freed, and trimmed once at its end.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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

    /// Have freed memory returned now, and forget what was pending.
    pub(crate) fn trim(&mut self, reclaimer: &Reclaimer) {
        self.pending = None;
        reclaimer.return_freed_memory();
    }
}

/// How often the reclaimer looks again at what it holds that something else still holds too
/// (a request that was under way when its snapshot was replaced).
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Frees replaced snapshots and returns freed memory to the system, on a thread of its own
/// at the lowest CPU priority (module docs). Dropping it stops the thread.
///
/// At that priority the thread may not get the CPU for a while (workers busy on the same
/// CPU): what it has not freed yet is freed by [`Reclaimer::free_now`], which the config
/// sync calls before it builds the next environment, so replaced environments do not pile up.
#[derive(Debug)]
pub(crate) struct Reclaimer {
    /// `None` when the thread could not be started: everything is then done inline.
    shared: Option<Arc<Shared>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<Pending>,
    work: Condvar,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drop what of `retired` nothing else holds, here; the rest goes back, before what
    /// came meanwhile.
    fn free_unused(&self, mut retired: Vec<Box<dyn Retired>>) {
        drop_unused(&mut retired);
        if !retired.is_empty() {
            let mut pending = self.lock();
            retired.append(&mut pending.retired);
            pending.retired = retired;
        }
    }
}

#[derive(Default)]
struct Pending {
    /// Oldest first.
    retired: Vec<Box<dyn Retired>>,
    trim: bool,
    stopped: bool,
}

/// A reference whose drop may free a lot.
trait Retired: Send {
    /// Whether this is the last strong reference: dropping it drops the value.
    fn is_last(&self) -> bool;
}

impl<T: Send + Sync> Retired for Arc<T> {
    fn is_last(&self) -> bool {
        Arc::strong_count(self) == 1
    }
}

impl Reclaimer {
    /// Name of the reclaimer's thread.
    pub(crate) const THREAD_NAME: &'static str = "airlock-reclaim";

    /// Start the reclaimer's thread.
    pub(crate) fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let for_thread = shared.clone();
        let started = std::thread::Builder::new()
            .name(Self::THREAD_NAME.into())
            .spawn(move || run(&for_thread));
        match started {
            Ok(_) => Self {
                shared: Some(shared),
            },
            Err(error) => {
                tracing::warn!(%error, "cannot start the reclaimer thread; freeing inline");
                Self { shared: None }
            }
        }
    }

    /// Drop `value` on the reclaimer's thread, once nothing else holds it. Retired values
    /// are dropped in the order they came: retire a container before what it contains.
    pub(crate) fn retire<T: Send + Sync + 'static>(&self, value: Arc<T>) {
        if let Some(shared) = &self.shared {
            shared.lock().retired.push(Box::new(value));
            shared.work.notify_one();
        }
    }

    /// Free here, now, what the reclaimer's thread has not freed yet (and nothing else
    /// holds).
    pub(crate) fn free_now(&self) {
        if let Some(shared) = &self.shared {
            let retired = std::mem::take(&mut shared.lock().retired);
            shared.free_unused(retired);
        }
    }

    /// Return freed memory to the system, on the reclaimer's thread.
    pub(crate) fn return_freed_memory(&self) {
        match &self.shared {
            Some(shared) => {
                shared.lock().trim = true;
                shared.work.notify_one();
            }
            None => release_freed(),
        }
    }

    /// A reclaimer whose thread never runs (as under a CPU that stays busy), for tests.
    #[cfg(test)]
    fn never_running() -> Self {
        Self {
            shared: Some(Arc::new(Shared::default())),
        }
    }
}

impl Drop for Reclaimer {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.lock().stopped = true;
            shared.work.notify_one();
        }
    }
}

/// The reclaimer's thread: drop what only it holds, trim when asked, until stopped.
fn run(shared: &Shared) {
    lower_priority();
    let mut pending = shared.lock();
    loop {
        if pending.stopped {
            return;
        }
        let trim = std::mem::take(&mut pending.trim);
        let retired = std::mem::take(&mut pending.retired);
        drop(pending);
        shared.free_unused(retired);
        if trim {
            release_freed();
        }
        pending = shared.lock();
        if pending.trim || pending.stopped {
            continue;
        }
        pending = if pending.retired.is_empty() {
            shared
                .work
                .wait(pending)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        } else {
            // Something is still held elsewhere (or came meanwhile): look again soon.
            shared
                .work
                .wait_timeout(pending, RECHECK_EVERY)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0
        };
    }
}

/// Drop, in order, every retired value nothing else holds: a snapshot first, then the
/// environment it held, now its last reference.
fn drop_unused(retired: &mut Vec<Box<dyn Retired>>) {
    let mut i = 0;
    while i < retired.len() {
        if retired[i].is_last() {
            drop(retired.remove(i));
        } else {
            i += 1;
        }
    }
}

/// Put the calling thread under `SCHED_IDLE`: it gets a CPU only when no other thread of
/// normal priority wants it. Lowering one's own priority needs no privilege.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid `sched_param` that outlives
    // the call.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if result != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "the reclaimer thread keeps its normal priority"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

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
        schedule.trim(&Reclaimer::start());
        assert_eq!(schedule.due(), None);
    }

    /// Records the name of the thread that dropped it.
    struct Witness(std::sync::mpsc::Sender<Option<String>>);

    impl Drop for Witness {
        fn drop(&mut self) {
            let _ = self
                .0
                .send(std::thread::current().name().map(str::to_string));
        }
    }

    #[test]
    fn a_retired_value_is_dropped_on_the_reclaimer_thread_once_nothing_else_holds_it() {
        let reclaimer = Reclaimer::start();
        let (dropped, drops) = std::sync::mpsc::channel();

        // Held by nothing else: dropped soon, by the reclaimer.
        reclaimer.retire(Arc::new(Witness(dropped.clone())));
        let by = drops.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(by.as_deref(), Some(Reclaimer::THREAD_NAME));

        // Still held (a request under way): not dropped while it is...
        let held = Arc::new(Witness(dropped.clone()));
        reclaimer.retire(held.clone());
        let early = drops.recv_timeout(RECHECK_EVERY * 4);
        assert!(early.is_err(), "dropped while still held: {early:?}");
        // ...and when the request lets go, the reclaimer drops it, not the request.
        drop(held);
        let by = drops.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(by.as_deref(), Some(Reclaimer::THREAD_NAME));

        // A container goes before what it held, so the contents' last reference is the
        // reclaimer's too.
        let inner = Arc::new(Witness(dropped.clone()));
        let outer = Arc::new(vec![inner.clone()]);
        reclaimer.retire(outer);
        reclaimer.retire(inner);
        let by = drops.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(by.as_deref(), Some(Reclaimer::THREAD_NAME));

        // Stopping drops what is still held elsewhere from the reclaimer's side only.
        let kept = Arc::new(Witness(dropped));
        reclaimer.retire(kept.clone());
        drop(reclaimer);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&kept) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            Arc::strong_count(&kept),
            1,
            "the reclaimer's reference is gone"
        );
        assert!(drops.try_recv().is_err(), "nothing else was dropped");
    }

    #[test]
    fn what_the_thread_has_not_freed_is_freed_by_free_now() {
        let reclaimer = Reclaimer::never_running();
        let (dropped, drops) = std::sync::mpsc::channel();
        let here = std::thread::current().name().map(str::to_string);
        reclaimer.retire(Arc::new(Witness(dropped.clone())));
        let held = Arc::new(Witness(dropped));
        reclaimer.retire(held.clone());
        assert!(
            drops.try_recv().is_err(),
            "nothing is freed before free_now"
        );

        reclaimer.free_now();
        assert_eq!(drops.try_recv().unwrap(), here, "freed by the caller");
        assert!(drops.try_recv().is_err(), "what a request holds is kept");
        drop(held);
        reclaimer.free_now();
        assert_eq!(drops.try_recv().unwrap(), here);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_reclaimer_runs_at_the_lowest_priority() {
        /// The scheduling policy of this process's thread named `name` (field 41 of its
        /// `stat`), once it exists.
        fn policy_of(name: &str) -> Option<u32> {
            for task in std::fs::read_dir("/proc/self/task").ok()? {
                let task = task.ok()?.path();
                let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
                if comm.trim() != name {
                    continue;
                }
                let stat = std::fs::read_to_string(task.join("stat")).ok()?;
                // After the parenthesized name, fields start at the third.
                let after_name = stat.rsplit_once(") ")?.1;
                return after_name.split(' ').nth(41 - 3)?.parse().ok();
            }
            None
        }
        let reclaimer = Reclaimer::start();
        // The thread sets its policy first thing; give it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut policy = None;
        while Instant::now() < deadline {
            policy = policy_of(Reclaimer::THREAD_NAME);
            if policy == Some(libc::SCHED_IDLE as u32) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(policy, Some(libc::SCHED_IDLE as u32));
        drop(reclaimer);
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
