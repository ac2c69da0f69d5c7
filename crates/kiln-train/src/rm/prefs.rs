//! Preference files: one ordering per JSON line, best first —
//! `{"prompt": "...", "samples": ["...", ...], "order": [2, 0, 1], "labeller": "..."}` — plus the
//! common pair format `{"prompt", "chosen", "rejected"}` read as an ordering of two. Appends
//! rewrite the file atomically (temp file + rename), so a killed labelling session leaves every
//! ordering it saved and never half a line.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::TrainError;

/// A person's (or the simulator's) ordering of samples for one prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ordering {
    pub prompt: String,
    pub samples: Vec<String>,
    /// Indices into `samples`, best first. Samples not listed were not ranked (skipped).
    pub order: Vec<usize>,
    /// Who ordered them (a person's name, `sim-person`, `import`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub labeller: String,
}

impl Ordering {
    /// Every (better, worse) pair of sample indices the ordering implies.
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        let o = &self.order;
        (0..o.len())
            .flat_map(|i| (i + 1..o.len()).map(move |j| (o[i], o[j])))
            .collect()
    }

    /// Check the ordering; `at` names the file and line for the message.
    pub fn validate(&self, at: &str) -> Result<(), TrainError> {
        let bad = |msg: String| Err(TrainError::Data(format!("{at}: {msg}")));
        if self.samples.len() < 2 {
            return bad(format!(
                "field \"samples\": {} sample(s); an ordering needs at least 2",
                self.samples.len()
            ));
        }
        if self.order.len() < 2 {
            return bad(format!(
                "field \"order\": ranks {} sample(s); an ordering needs at least 2",
                self.order.len()
            ));
        }
        let mut seen = vec![false; self.samples.len()];
        for &i in &self.order {
            if i >= self.samples.len() {
                return bad(format!(
                    "field \"order\": index {i} is out of range ({} samples)",
                    self.samples.len()
                ));
            }
            if seen[i] {
                return bad(format!(
                    "field \"order\": contradictory, sample {i} is ranked twice (it would be both better and worse than the samples between)"
                ));
            }
            seen[i] = true;
        }
        // The same text ranked above itself is a contradiction too (a pair file with
        // chosen == rejected, or duplicated samples ordered apart).
        for (a, b) in self.pairs() {
            if self.samples[a] == self.samples[b] {
                return bad(format!(
                    "contradictory: samples {a} and {b} are the same text ranked apart"
                ));
            }
        }
        Ok(())
    }
}

/// Parse one line (ordering or pair format).
fn parse_line(v: &Value, at: &str) -> Result<Ordering, TrainError> {
    let obj = v
        .as_object()
        .ok_or_else(|| TrainError::Data(format!("{at}: expected a JSON object")))?;
    let text = |k: &str| -> Result<String, TrainError> {
        obj.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                TrainError::Data(format!("{at}: field \"{k}\" is missing or not a string"))
            })
    };
    let prompt = text("prompt")?;
    let o = if obj.contains_key("chosen") || obj.contains_key("rejected") {
        Ordering {
            prompt,
            samples: vec![text("chosen")?, text("rejected")?],
            order: vec![0, 1],
            labeller: "import".into(),
        }
    } else {
        let samples = obj
            .get("samples")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                TrainError::Data(format!(
                    "{at}: field \"samples\" is missing or not an array (or give \"chosen\" and \"rejected\")"
                ))
            })?
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str().map(str::to_string).ok_or_else(|| {
                    TrainError::Data(format!("{at}: field \"samples\"[{i}] is not a string"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let order = obj
            .get("order")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                TrainError::Data(format!("{at}: field \"order\" is missing or not an array"))
            })?
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_u64().map(|x| x as usize).ok_or_else(|| {
                    TrainError::Data(format!(
                        "{at}: field \"order\"[{i}] is not a non-negative integer"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ordering {
            prompt,
            samples,
            order,
            labeller: obj
                .get("labeller")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        }
    };
    o.validate(at)?;
    Ok(o)
}

/// Read a preference file (orderings and pairs may mix); blank lines are skipped; any bad line is
/// an error naming `file:line` and the field.
pub fn read_prefs(path: &Path) -> Result<Vec<Ordering>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let v: Value = serde_json::from_str(line)
            .map_err(|e| TrainError::Data(format!("{at}: not JSON ({e})")))?;
        out.push(parse_line(&v, &at)?);
    }
    Ok(out)
}

/// Append orderings to `path`: the whole file is rewritten to a temp file and renamed over the old
/// one, so a kill at any moment leaves either the old file or the new one (preference files are
/// small; safety beats the O(n) rewrite).
pub fn append_prefs(path: &Path, new: &[Ordering]) -> Result<(), TrainError> {
    for o in new {
        o.validate("new ordering")?;
    }
    let mut bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    for o in new {
        let line = serde_json::to_string(o).map_err(|source| TrainError::Json {
            path: path.display().to_string(),
            source,
        })?;
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    kiln_data::write_atomic(path, &bytes).map_err(|e| TrainError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> std::path::PathBuf {
        let p = dir.join("p.jsonl");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn orderings_and_pairs_read_back_and_imply_all_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "{\"prompt\":\"q\",\"samples\":[\"a\",\"b\",\"c\"],\"order\":[2,0,1]}\n\n{\"prompt\":\"q\",\"chosen\":\"x\",\"rejected\":\"y\"}\n",
        );
        let o = read_prefs(&p).unwrap();
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].pairs(), vec![(2, 0), (2, 1), (0, 1)]);
        assert_eq!(o[1].samples, vec!["x", "y"]);
        assert_eq!(o[1].pairs(), vec![(0, 1)]);
        append_prefs(&p, &o[..1]).unwrap();
        assert_eq!(read_prefs(&p).unwrap().len(), 3);
    }

    #[test]
    fn bad_lines_name_the_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("not json", "not JSON"),
            (
                "{\"samples\":[\"a\",\"b\"],\"order\":[0,1]}",
                "field \"prompt\"",
            ),
            (
                "{\"prompt\":\"q\",\"samples\":[\"a\"],\"order\":[0]}",
                "at least 2",
            ),
            (
                "{\"prompt\":\"q\",\"samples\":[\"a\",\"b\"],\"order\":[0]}",
                "at least 2",
            ),
            (
                "{\"prompt\":\"q\",\"samples\":[\"a\",\"b\"],\"order\":[0,0]}",
                "contradictory",
            ),
            (
                "{\"prompt\":\"q\",\"samples\":[\"a\",\"b\"],\"order\":[0,5]}",
                "out of range",
            ),
            (
                "{\"prompt\":\"q\",\"samples\":[\"a\",\"b\"],\"order\":[0,-1]}",
                "\"order\"[1]",
            ),
            (
                "{\"prompt\":\"q\",\"chosen\":\"a\",\"rejected\":\"a\"}",
                "contradictory",
            ),
            ("{\"prompt\":\"q\",\"chosen\":\"a\"}", "field \"rejected\""),
        ];
        for (line, want) in cases {
            let p = write(dir.path(), &format!("\n{line}\n"));
            let e = read_prefs(&p).unwrap_err().to_string();
            assert!(e.contains("p.jsonl:2"), "{line}: {e}");
            assert!(e.contains(want), "{line}: {e}");
        }
    }
}
