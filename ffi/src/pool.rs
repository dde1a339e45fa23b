//! Worker threads per call: each heavy call runs on its own pool of the requested size,
//! whose threads have all exited when the call returns (nothing outlives the call, and an
//! app's own rayon pool is left alone).

use crate::status::{Failure, FfiResult};

/// Runs `body` on the calling thread with a pool of `threads` workers (0: one per core)
/// that the body hands heavy work to with `pool.install`.
pub(crate) fn with_pool<R>(threads: usize, body: impl FnOnce(&rayon::ThreadPool) -> R) -> FfiResult<R> {
    let threads = match threads {
        0 => engine::threads::cores(),
        n => engine::threads::check_threads(n, "threads")?,
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("nudge-{i}"))
        .build_scoped(|thread| thread.run(), body)
        .map_err(|e| Failure::invalid(format!("cannot start {threads} worker threads: {e}")))
}
