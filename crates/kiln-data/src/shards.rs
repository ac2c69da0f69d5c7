//! Parquet shards shared by the pipeline's stages: token shards (what `kiln data tokenize` writes
//! and the pretraining loader reads) and a reader for one text column of any text shard (ours or
//! Hugging Face's, e.g. FineWeb's `text` column).
//!
//! Token shard layout: one row per document, one column `tokens: List<UInt32>` (BOS first, as
//! the tokenizer produced it), zstd-compressed. One row per document keeps document boundaries
//! explicit (the loader can pack or window as it likes) and stays readable by pandas/pyarrow.
//! u32 costs twice u16 on disk before compression; zstd takes most of that back, and one type
//! serves vocabularies above 65,536 too.
//!
//! Writes are atomic: the file appears under its name only once complete (temp file + rename).

use arrow_array::builder::{ListBuilder, UInt32Builder};
use arrow_array::{Array, ListArray, RecordBatch, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the token column in a token shard.
pub const TOKENS_COLUMN: &str = "tokens";

/// Errors reading or writing a shard; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable parquet shard: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{path}: column `{column}` {problem}")]
    Column {
        path: PathBuf,
        column: String,
        problem: String,
    },
}

fn parquet_err(path: &Path, e: impl std::fmt::Display) -> ShardError {
    ShardError::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn token_schema() -> Arc<Schema> {
    let item = Field::new("item", DataType::UInt32, false);
    Arc::new(Schema::new(vec![Field::new(
        TOKENS_COLUMN,
        DataType::List(Arc::new(item)),
        false,
    )]))
}

/// A temp path beside `path` (same filesystem, so the final rename is atomic).
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Write `documents` (each already starting with BOS) as one token shard, atomically.
pub fn write_token_shard(path: &Path, documents: &[Vec<u32>]) -> Result<(), ShardError> {
    let schema = token_schema();
    let item = Field::new("item", DataType::UInt32, false);
    let mut builder = ListBuilder::new(UInt32Builder::new()).with_field(Arc::new(item));
    for doc in documents {
        builder.values().append_slice(doc);
        builder.append(true);
    }
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(builder.finish())])
        .map_err(|e| parquet_err(path, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .build();
    let tmp = temp_path_for(path);
    let result = (|| {
        let file = File::create(&tmp).map_err(|source| ShardError::Io {
            path: tmp.clone(),
            source,
        })?;
        let mut writer =
            ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| parquet_err(path, e))?;
        writer.write(&batch).map_err(|e| parquet_err(path, e))?;
        writer.close().map_err(|e| parquet_err(path, e))?;
        std::fs::rename(&tmp, path).map_err(|source| ShardError::Io {
            path: path.to_path_buf(),
            source,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Read every document of a token shard.
pub fn read_token_shard(path: &Path) -> Result<Vec<Vec<u32>>, ShardError> {
    let mut documents = Vec::new();
    for batch in open_batches(path)? {
        let batch = batch.map_err(|e| parquet_err(path, e))?;
        let column = batch
            .column_by_name(TOKENS_COLUMN)
            .ok_or_else(|| ShardError::Column {
                path: path.to_path_buf(),
                column: TOKENS_COLUMN.into(),
                problem: "is missing (is this a token shard?)".into(),
            })?;
        let lists =
            column
                .as_any()
                .downcast_ref::<ListArray>()
                .ok_or_else(|| ShardError::Column {
                    path: path.to_path_buf(),
                    column: TOKENS_COLUMN.into(),
                    problem: format!("has type {}, expected List<UInt32>", column.data_type()),
                })?;
        for row in 0..lists.len() {
            let values = lists.value(row);
            let ids = values
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or_else(|| ShardError::Column {
                    path: path.to_path_buf(),
                    column: TOKENS_COLUMN.into(),
                    problem: format!("holds {}, expected UInt32", values.data_type()),
                })?;
            documents.push(ids.values().to_vec());
        }
    }
    Ok(documents)
}

/// Read one string column (e.g. `text`) of a parquet file: kiln's text shards, or Hugging Face
/// dataset shards such as FineWeb's. Null rows are skipped.
pub fn read_text_column(path: &Path, column: &str) -> Result<Vec<String>, ShardError> {
    let mut out = Vec::new();
    for batch in open_batches(path)? {
        let batch = batch.map_err(|e| parquet_err(path, e))?;
        let array = batch
            .column_by_name(column)
            .ok_or_else(|| ShardError::Column {
                path: path.to_path_buf(),
                column: column.into(),
                problem: format!(
                    "is missing; the file has: {}",
                    batch
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        if let Some(strings) = array.as_any().downcast_ref::<arrow_array::StringArray>() {
            out.extend(strings.iter().flatten().map(str::to_owned));
        } else if let Some(strings) = array
            .as_any()
            .downcast_ref::<arrow_array::LargeStringArray>()
        {
            out.extend(strings.iter().flatten().map(str::to_owned));
        } else if let Some(strings) = array
            .as_any()
            .downcast_ref::<arrow_array::StringViewArray>()
        {
            out.extend(strings.iter().flatten().map(str::to_owned));
        } else {
            return Err(ShardError::Column {
                path: path.to_path_buf(),
                column: column.into(),
                problem: format!("has type {}, expected a string type", array.data_type()),
            });
        }
    }
    Ok(out)
}

fn open_batches(
    path: &Path,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, ShardError> {
    let file = File::open(path).map_err(|source| ShardError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(8192).build())
        .map_err(|e| parquet_err(path, e))
}

/// The `*.parquet` files of a folder (or the file itself), sorted by name so every task and
/// every run sees the same order.
pub fn list_shards(path: &Path) -> Result<Vec<PathBuf>, ShardError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|source| ShardError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut shards: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "parquet")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    shards.sort();
    Ok(shards)
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
        // No temp files left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(list_shards(dir.path()).unwrap(), vec![path]);
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
    fn text_column_reader_reports_missing_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok.parquet");
        write_token_shard(&path, &[vec![1]]).unwrap();
        let err = read_text_column(&path, "text").unwrap_err().to_string();
        assert!(
            err.contains("`text` is missing") && err.contains("tokens"),
            "{err}"
        );
    }

    #[test]
    fn text_column_reader_reads_strings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("text.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, true)]));
        let texts = arrow_array::StringArray::from(vec![Some("hello"), None, Some("world")]);
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(texts)]).unwrap();
        let mut w = ArrowWriter::try_new(File::create(&path).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        assert_eq!(
            read_text_column(&path, "text").unwrap(),
            vec!["hello", "world"]
        );
    }
}
