//! The SQLite projector yields the cores to the threads that answer deliveries.
//!
//! The projection is derived and may lag while a delivery's answer may not:
//! when both cores are busy, Thinkific's deliveries go first. Raising one's
//! own nice value needs no privilege. (The forwarder used to be lowered too;
//! it then fell behind for good under load, see `forward::worker`.)

/// Nice 10 for the calling thread only (`what` names it in the debug log if
/// the system refuses).
pub fn lower_this_thread(what: &str) {
    // SAFETY: a plain syscall on this thread's own id.
    let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
    if done != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the {what}'s priority");
    }
}

/// Worker threads for the server's runtime (and the SQLite forwarder's):
/// `TOKIO_WORKER_THREADS` when set, else one fewer than the cores, at least
/// one. The log writer, the projector and the checkpointer are threads of
/// their own that take about a core under load; a runtime worker per core
/// beside them mostly parked and woke (tokio wakes an idle worker to steal
/// whenever a task becomes runnable). On 2 cores one worker cost 11–15 %
/// less CPU per event at 3,000 deliveries/s, 3–9 % less at 5,000 with two
/// templated subscriptions, and kept the same rate at full load
/// (BENCHMARKS.md).
pub fn runtime_workers() -> usize {
    if let Some(n) = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return n;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_sub(1).max(1)
}
