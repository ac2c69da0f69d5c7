//! Reinforcement learning on verifiable tasks (GRPO family): the loss as per-token engine weights
//! ([`loss`]).

pub mod loss;
