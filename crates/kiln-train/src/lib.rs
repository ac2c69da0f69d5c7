//! kiln-train: training loops (pretrain, SFT, later RL/RLHF), loaders, schedules, evaluation, metrics and plots.
