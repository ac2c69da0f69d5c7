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
