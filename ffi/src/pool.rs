//! Worker threads per call: each heavy call runs on its own pool of the requested size,
//! whose threads have all exited when the call returns (nothing outlives the call, and an
//! app's own rayon pool is left alone). One thread means the calling thread alone: no
//! thread is started, as embedded hosts (and emulators without threads) want.

use crate::status::{Failure, FfiResult};

thread_local! {
    /// The calling thread as the only worker of a pool, made at its first one-thread call
    /// and kept (rayon keeps a thread registered with the first pool it worked for, and
    /// never frees that record: about 7 KB per such thread, which the C tests' leak
    /// checker is told of in tests/c/lsan.supp). None for a thread that already works for
    /// another pool (an app's own rayon worker): such a thread gets one worker thread per
    /// call instead.
    static HERE: Option<rayon::ThreadPool> =
        rayon::ThreadPoolBuilder::new().num_threads(1).use_current_thread().build().ok();
}

/// Runs `body` on the calling thread with a pool of `threads` workers (0: one per core)
/// that the body hands heavy work to with `pool.install`.
pub(crate) fn with_pool<R>(threads: usize, body: impl FnOnce(&rayon::ThreadPool) -> R) -> FfiResult<R> {
    let threads = match threads {
        0 => engine::threads::cores(),
        n => engine::threads::check_threads(n, "threads")?,
    };
    let mut body = Some(body);
    if threads == 1 {
        let done = HERE.with(|pool| pool.as_ref().map(|p| (body.take().expect("not run yet"))(p)));
        if let Some(r) = done {
            return Ok(r);
        }
    }
    let body = body.take().expect("not run yet");
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("nudge-{i}"))
        .build_scoped(|thread| thread.run(), body)
        .map_err(|e| Failure::invalid(format!("cannot start {threads} worker threads: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_is_the_calling_thread_again_and_again() {
        let me = std::thread::current().id();
        for _ in 0..3 {
            let ran_on = with_pool(1, |pool| pool.install(|| std::thread::current().id())).unwrap();
            assert_eq!(ran_on, me);
        }
        let other = with_pool(2, |pool| pool.install(|| std::thread::current().id())).unwrap();
        assert_ne!(other, me);
    }
}
