//! GGUF (llama.cpp's model file format, versions 2 and 3): the reader ([`GgufFile`]: memory-mapped,
//! metadata key/values of every type, tensor infos, alignment, data offset), dequantization of
//! its weight types ([`quant`]), the writer ([`GgufWriter`]: atomic, aligned, F32/F16/Q8_0
//! encoders) and a kiln model's weights under llama.cpp's architecture names ([`export`]).
//!
//! The file is hostile input: every count, length, type and offset is checked against the bytes
//! that remain before it is used, so no allocation is ever sized by an unchecked header field and a
//! bad file is an error naming the field, never a panic. Counts are also capped (arrays 2^22 items,
//! 2^20 tensors, names under 64 bytes) and vectors reserved as their items parse, so a corrupt
//! count costs at most what the file backs; tests/gguf_fuzz.rs holds the reader to this on
//! thousands of mutated real headers.

pub mod export;
pub mod quant;
mod read;
mod write;

pub use quant::{dequantize, GgmlType};
pub use read::{GgufFile, TensorInfo, Value};
pub use write::{encode, quantize_q8_0, GgufWriter, DEFAULT_ALIGNMENT};

/// What was wrong with a GGUF file; `field` names the header field that was bad.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("GGUF {field}: {msg}")]
    Bad { field: String, msg: String },
}

pub(crate) fn bad(field: impl Into<String>, msg: impl Into<String>) -> GgufError {
    GgufError::Bad {
        field: field.into(),
        msg: msg.into(),
    }
}
