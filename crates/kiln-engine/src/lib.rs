//! kiln-engine: model configs, parameters, explicit forward/backward, optimizers, KV-cache decode, checkpoints; backends cpu (and cuda).
