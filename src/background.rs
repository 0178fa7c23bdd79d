//! Background threads yield the cores to the ones that answer deliveries.
//!
//! The SQLite projector and, on SQLite, the forwarder do work that may lag
//! (the projection is derived; a forward may leave a few milliseconds later)
//! while a delivery's answer may not: when both cores are busy, Thinkific's
//! deliveries go first. Raising one's own nice value needs no privilege.

/// Nice 10 for the calling thread only (`what` names it in the debug log if
/// the system refuses).
pub fn lower_this_thread(what: &str) {
    // SAFETY: a plain syscall on this thread's own id.
    let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
    if done != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the {what}'s priority");
    }
}
