//! Fault points: tests that must kill a run at one precise step (after its
//! receipt, between two artifact writes, either side of the pointer swap)
//! name the step in `KFM_FAULT_POINT`, and the process aborts there, as
//! abruptly as a crash: no unwinding, nothing flushed.
//!
//! Only builds with the `testing` feature (this workspace's tests) look at
//! the variable; in every other build [`point`] does nothing.

/// Aborts the process if `KFM_FAULT_POINT` names this step (feature
/// `testing` only).
#[inline]
pub fn point(step: &str) {
    #[cfg(feature = "testing")]
    if std::env::var("KFM_FAULT_POINT").is_ok_and(|p| p == step) {
        std::process::abort();
    }
    #[cfg(not(feature = "testing"))]
    let _ = step;
}
