//! Parquet shards, the one way kiln reads and writes them: [`write_parquet`] (record batches →
//! one zstd-compressed file, written atomically) serves kiln-data's text shards and
//! kiln-tokenizer's token shards; [`read_batches`] opens any shard; [`read_text_column`] reads one
//! text column of any text shard (ours or Hugging Face's, e.g. FineWeb's `text` column); and
//! [`list_shards`] gives a folder's shards in a fixed order.

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::{Path, PathBuf};
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

/// Writes `batches` (all of `schema`) as one parquet file at `path`, zstd level 3, atomically
/// (temp file, fsync, rename: see the `atomic` module): the file appears under its name only
/// once complete.
pub fn write_parquet(
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), ShardError> {
    /// The two ways a write fails, told apart so each maps to its [`ShardError`] variant.
    enum Failure {
        Io(std::io::Error),
        Parquet(String),
    }
    impl From<std::io::Error> for Failure {
        fn from(e: std::io::Error) -> Self {
            Failure::Io(e)
        }
    }
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .build();
    let pq = |e: parquet::errors::ParquetError| Failure::Parquet(e.to_string());
    crate::atomic::write_file_atomic(path, |file| {
        let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(pq)?;
        for batch in batches {
            writer.write(batch).map_err(pq)?;
        }
        writer.close().map_err(pq)?;
        Ok(())
    })
    .map_err(|e| match e {
        Failure::Io(source) => ShardError::Io {
            path: path.to_path_buf(),
            source,
        },
        Failure::Parquet(message) => ShardError::Parquet {
            path: path.to_path_buf(),
            message,
        },
    })
}

/// The record batches of a parquet file, 8,192 rows at a time; errors name the file.
pub fn read_batches(
    path: &Path,
) -> Result<impl Iterator<Item = Result<RecordBatch, ShardError>> + '_, ShardError> {
    Ok(open_batches(path)?.map(move |b| b.map_err(|e| parquet_err(path, e))))
}

/// Read one string column (e.g. `text`) of a parquet file: kiln's text shards, or Hugging Face
/// dataset shards such as FineWeb's. Null rows are skipped.
pub fn read_text_column(path: &Path, column: &str) -> Result<Vec<String>, ShardError> {
    let mut out = Vec::new();
    for batch in read_batches(path)? {
        let batch = batch?;
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

fn open_batches(path: &Path) -> Result<ParquetRecordBatchReader, ShardError> {
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
    use arrow_array::StringArray;
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    fn write_strings(path: &Path, name: &str, values: Vec<Option<&str>>) {
        let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(values))])
            .unwrap();
        write_parquet(path, schema, &[batch]).unwrap();
    }

    #[test]
    fn written_shards_are_listed_without_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard_00000.parquet");
        write_strings(&path, "text", vec![Some("a")]);
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
        write_strings(&path, "text", vec![Some("some text"); 100]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = read_text_column(&path, "text").unwrap_err().to_string();
        assert!(err.contains("bad.parquet"), "{err}");
    }

    #[test]
    fn text_column_reader_reports_missing_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok.parquet");
        write_strings(&path, "tokens", vec![Some("x")]);
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
        write_strings(&path, "text", vec![Some("hello"), None, Some("world")]);
        assert_eq!(
            read_text_column(&path, "text").unwrap(),
            vec!["hello", "world"]
        );
    }
}
