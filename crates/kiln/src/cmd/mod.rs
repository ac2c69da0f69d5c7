//! One module per subcommand family.

pub mod bench;
pub mod chat;
pub mod data;
pub mod pretrain;
pub mod sample;
pub mod sft;
pub mod speedrun;
pub mod tok;

/// Size rayon's global pool for the engine (all cores unless told) and return the thread count.
pub fn engine_threads(n: Option<usize>) -> usize {
    if let Some(n) = n {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    rayon::current_num_threads()
}

/// Runs an engine command on a worker of rayon's global pool instead of the main thread. The
/// engine issues hundreds of parallel ops per training step (and per decoded token); forked from
/// inside the pool they are split and stolen locally, while from the main thread each one is
/// injected into the pool, wakes sleeping workers and parks the main thread — and the main thread
/// is a third runnable thread on a machine whose pool already has one per core. (On the shared
/// 2-core machine the gain was within run-to-run noise; the change removes work, not adds it.)
pub fn on_engine_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}
