//! Progress reporting for long operations, without tying the engine to a UI.
//!
//! The CLI implements [`Progress`] with indicatif bars; tests and libraries
//! pass [`NoProgress`].

/// Receives progress from a long-running operation, possibly from many threads.
pub trait Progress: Sync {
    /// A new stage starts with `total` units of work.
    fn stage(&self, name: &str, total: u64);
    /// `n` more units of the current stage are done.
    fn inc(&self, n: u64);
    /// The current stage is finished.
    fn finish_stage(&self);
}

/// Ignores all progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _: &str, _: u64) {}
    fn inc(&self, _: u64) {}
    fn finish_stage(&self) {}
}
