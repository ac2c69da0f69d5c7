//! kiln-tokenizer: byte-level BPE — training, encode/decode, split patterns, special tokens, tiktoken rank files.
