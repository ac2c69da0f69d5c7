//! kiln-chat: conversation format and loss masks, sampling policies, tasks and evals.
