//! Token shards, what `kiln data tokenize` and the speedrun write and the pretraining loader reads,
//! and [`ShardEncoder`], the one way kiln turns documents into them (parallel encoding, BOS first
//! in each document, finished shards skipped so a rerun resumes).
//!
//! Layout: one row per document, one column `tokens: List<UInt32>` (BOS first, as the tokenizer
//! produced it), zstd-compressed, written atomically by kiln-data's [`kiln_data::write_parquet`].
//! One row per document keeps document boundaries explicit (the loader can pack or window as it
//! likes) and stays readable by pandas/pyarrow. u32 costs twice u16 on disk before compression;
//! zstd takes most of that back, and one type serves vocabularies above 65,536 too.

use crate::Tokenizer;
use arrow_array::builder::{ListBuilder, UInt32Builder};
use arrow_array::{Array, ListArray, RecordBatch, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use kiln_data::ShardError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the token column in a token shard.
pub const TOKENS_COLUMN: &str = "tokens";

fn item_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::UInt32, false))
}

/// Writes `documents` (each already starting with BOS) as one token shard, atomically.
pub fn write_token_shard(path: &Path, documents: &[Vec<u32>]) -> Result<(), ShardError> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        TOKENS_COLUMN,
        DataType::List(item_field()),
        false,
    )]));
    let mut builder = ListBuilder::new(UInt32Builder::new()).with_field(item_field());
    for doc in documents {
        builder.values().append_slice(doc);
        builder.append(true);
    }
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(builder.finish())]).map_err(|e| {
            ShardError::Parquet {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;
    kiln_data::write_parquet(path, schema, &[batch])
}

/// Reads every document of a token shard.
pub fn read_token_shard(path: &Path) -> Result<Vec<Vec<u32>>, ShardError> {
    let column_err = |problem: String| ShardError::Column {
        path: path.to_path_buf(),
        column: TOKENS_COLUMN.into(),
        problem,
    };
    let mut documents = Vec::new();
    for batch in kiln_data::read_batches(path)? {
        let batch = batch?;
        let column = batch
            .column_by_name(TOKENS_COLUMN)
            .ok_or_else(|| column_err("is missing (is this a token shard?)".into()))?;
        let lists = column.as_any().downcast_ref::<ListArray>().ok_or_else(|| {
            column_err(format!(
                "has type {}, expected List<UInt32>",
                column.data_type()
            ))
        })?;
        for row in 0..lists.len() {
            let values = lists.value(row);
            let ids = values
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or_else(|| {
                    column_err(format!("holds {}, expected UInt32", values.data_type()))
                })?;
            documents.push(ids.values().to_vec());
        }
    }
    Ok(documents)
}

/// Documents and tokens (BOS included) of one written shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardCounts {
    pub docs: usize,
    pub tokens: usize,
}

/// Totals of [`ShardEncoder::encode_text_shards`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodeSummary {
    /// Documents and tokens of the shards written by this call.
    pub written: ShardCounts,
    /// Shards already present in the output folder, left as they were.
    pub skipped: usize,
}

/// Encodes documents into token shards with one tokenizer and one BOS id.
pub struct ShardEncoder<'t> {
    tokenizer: &'t Tokenizer,
    bos: u32,
}

impl<'t> ShardEncoder<'t> {
    /// `bos` is put before every document (e.g. the id of `<|bos|>`).
    pub fn new(tokenizer: &'t Tokenizer, bos: u32) -> Self {
        ShardEncoder { tokenizer, bos }
    }

    /// Encodes `texts` in parallel (ordinary text: special-token text is not recognised), each
    /// document starting with BOS.
    pub fn encode(&self, texts: &[&str]) -> Vec<Vec<u32>> {
        self.tokenizer
            .encode_batch_ordinary(texts)
            .into_iter()
            .map(|ids| {
                let mut doc = Vec::with_capacity(ids.len() + 1);
                doc.push(self.bos);
                doc.extend(ids);
                doc
            })
            .collect()
    }

    /// Encodes `texts` into the token shard `target` (its folder is created), or does nothing
    /// and returns `None` when `target` already exists: shards are written atomically, so one
    /// that exists is finished.
    pub fn write_shard(
        &self,
        texts: &[&str],
        target: &Path,
    ) -> Result<Option<ShardCounts>, ShardError> {
        if target.exists() {
            return Ok(None);
        }
        let docs = self.encode(texts);
        write_token_shard(target, &docs)?;
        Ok(Some(ShardCounts {
            docs: docs.len(),
            tokens: docs.iter().map(Vec::len).sum(),
        }))
    }

    /// Text shards → token shards of the same file names in `out`: the string column `column`
    /// of each (see [`kiln_data::read_text_column`]) through [`Self::write_shard`]. Finished
    /// shards are skipped, so a rerun resumes. `on_shard` sees each shard's outcome in order
    /// (`None`: skipped), e.g. for a progress bar.
    pub fn encode_text_shards(
        &self,
        shards: &[PathBuf],
        column: &str,
        out: &Path,
        mut on_shard: impl FnMut(Option<ShardCounts>),
    ) -> Result<EncodeSummary, ShardError> {
        let mut summary = EncodeSummary::default();
        for shard in shards {
            let name = shard.file_name().ok_or_else(|| ShardError::Io {
                path: shard.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
            })?;
            let target = out.join(name);
            let outcome = if target.exists() {
                None
            } else {
                let texts = kiln_data::read_text_column(shard, column)?;
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                self.write_shard(&refs, &target)?
            };
            match outcome {
                Some(c) => {
                    summary.written.docs += c.docs;
                    summary.written.tokens += c.tokens;
                }
                None => summary.skipped += 1,
            }
            on_shard(outcome);
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shard_round_trips_documents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard_00000.parquet");
        let docs = vec![vec![7, 1, 2, 3], vec![7], vec![7, u32::MAX, 0, 65_536]];
        write_token_shard(&path, &docs).unwrap();
        assert_eq!(read_token_shard(&path).unwrap(), docs);
        assert_eq!(kiln_data::list_shards(dir.path()).unwrap(), vec![path]);
    }

    #[test]
    fn truncated_shard_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.parquet");
        write_token_shard(&path, &vec![vec![1, 2, 3]; 100]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = read_token_shard(&path).unwrap_err().to_string();
        assert!(err.contains("bad.parquet"), "{err}");
    }

    #[test]
    fn text_shards_encode_bos_first_and_finished_shards_are_skipped() {
        let tok = Tokenizer::from_pretrained("gpt2").unwrap();
        let bos = tok.special_token_id("<|endoftext|>").unwrap();
        let enc = ShardEncoder::new(&tok, bos);
        let dir = tempfile::tempdir().unwrap();
        let (text, out) = (dir.path().join("text"), dir.path().join("tokens"));
        let doc = |t: &str| kiln_data::TextDoc {
            text: t.into(),
            id: String::new(),
            url: String::new(),
            language: "en".into(),
            language_score: 1.0,
        };
        kiln_data::write_text_shard(&text.join("a.parquet"), &[doc("hello world"), doc("")])
            .unwrap();
        let shards = kiln_data::list_shards(&text).unwrap();
        let mut seen = Vec::new();
        let s = enc
            .encode_text_shards(&shards, "text", &out, |o| seen.push(o))
            .unwrap();
        let want = vec![vec![bos, 31373, 995], vec![bos]];
        assert_eq!(read_token_shard(&out.join("a.parquet")).unwrap(), want);
        let counts = ShardCounts { docs: 2, tokens: 4 };
        assert_eq!(
            (s.written, s.skipped, seen),
            (counts, 0, vec![Some(counts)])
        );
        // A rerun leaves the finished shard alone.
        let again = enc
            .encode_text_shards(&shards, "text", &out, |_| {})
            .unwrap();
        assert_eq!((again.written, again.skipped), (ShardCounts::default(), 1));
        assert_eq!(enc.encode(&["hello world"]), want[..1]);
    }
}
