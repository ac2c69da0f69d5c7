//! Text shards, the pipeline's output: parquet, zstd, one row per document with columns
//! `text`, `id`, `url` (Utf8), `language` (Utf8), `language_score` (Float64) — the FineWeb
//! column names, so `kiln data tokenize`, pandas and Hugging Face `datasets` read them as they
//! are. Writes are atomic ([`write_parquet`]).

use arrow_array::{Array, Float64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use std::path::Path;
use std::sync::Arc;

use crate::shards::{read_batches, write_parquet, ShardError};

/// One document of a text shard.
#[derive(Debug, Clone, PartialEq)]
pub struct TextDoc {
    pub text: String,
    pub id: String,
    pub url: String,
    pub language: String,
    pub language_score: f64,
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("text", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        Field::new("language", DataType::Utf8, false),
        Field::new("language_score", DataType::Float64, false),
    ]))
}

fn perr(path: &Path, e: impl std::fmt::Display) -> ShardError {
    ShardError::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Write documents as one text shard, atomically.
pub fn write_text_shard(path: &Path, docs: &[TextDoc]) -> Result<(), ShardError> {
    let col = |f: fn(&TextDoc) -> &str| -> Arc<dyn Array> {
        Arc::new(StringArray::from_iter_values(docs.iter().map(f)))
    };
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            col(|d| &d.text),
            col(|d| &d.id),
            col(|d| &d.url),
            col(|d| &d.language),
            Arc::new(Float64Array::from_iter_values(
                docs.iter().map(|d| d.language_score),
            )),
        ],
    )
    .map_err(|e| perr(path, e))?;
    write_parquet(path, schema(), &[batch])
}

/// Read every document of a text shard written by [`write_text_shard`].
pub fn read_text_shard(path: &Path) -> Result<Vec<TextDoc>, ShardError> {
    let mut docs = Vec::new();
    for batch in read_batches(path)? {
        let batch = batch?;
        let strings = |name: &str| -> Result<&StringArray, ShardError> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| ShardError::Column {
                    path: path.to_path_buf(),
                    column: name.into(),
                    problem: "is missing or not Utf8 (is this a kiln text shard?)".into(),
                })
        };
        let (text, id, url, lang) = (
            strings("text")?,
            strings("id")?,
            strings("url")?,
            strings("language")?,
        );
        let score = batch
            .column_by_name("language_score")
            .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
            .ok_or_else(|| ShardError::Column {
                path: path.to_path_buf(),
                column: "language_score".into(),
                problem: "is missing or not Float64".into(),
            })?;
        for r in 0..batch.num_rows() {
            docs.push(TextDoc {
                text: text.value(r).to_string(),
                id: id.value(r).to_string(),
                url: url.value(r).to_string(),
                language: lang.value(r).to_string(),
                language_score: score.value(r),
            });
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_text_column_is_readable_by_the_shared_reader() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        let docs = vec![
            TextDoc {
                text: "héllo\nworld".into(),
                id: "a".into(),
                url: "http://x/".into(),
                language: "en".into(),
                language_score: 0.9,
            },
            TextDoc {
                text: String::new(),
                id: "b".into(),
                url: String::new(),
                language: "en".into(),
                language_score: 1.0,
            },
        ];
        write_text_shard(&p, &docs).unwrap();
        assert_eq!(read_text_shard(&p).unwrap(), docs);
        assert_eq!(
            crate::shards::read_text_column(&p, "text").unwrap(),
            ["héllo\nworld", ""]
        );
        write_text_shard(&p, &[]).unwrap();
        assert!(read_text_shard(&p).unwrap().is_empty());
    }
}
