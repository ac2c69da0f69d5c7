//! Per-stage statistics: documents and bytes in/out, drops per reason and other counters,
//! merged across units and tasks (sums), written as JSON and shown as a table.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The pipeline's stages, in FineWeb's order.
pub const STAGES: &[&str] = &[
    "read",
    "url_filter",
    "extract",
    "language",
    "gopher_repetition",
    "gopher_quality",
    "c4",
    "fineweb",
    "minhash",
    "pii",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageStats {
    pub stage: String,
    pub docs_in: u64,
    pub docs_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Dropped documents per reason.
    pub dropped: BTreeMap<String, u64>,
    /// Other counters (records that are not documents, charset fixes, PII replacements…).
    pub notes: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub stages: Vec<StageStats>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            stages: STAGES
                .iter()
                .map(|s| StageStats {
                    stage: s.to_string(),
                    ..Default::default()
                })
                .collect(),
        }
    }
}

impl Stats {
    pub fn stage(&mut self, name: &str) -> &mut StageStats {
        let i = self
            .stages
            .iter()
            .position(|s| s.stage == name)
            .unwrap_or_else(|| {
                self.stages.push(StageStats {
                    stage: name.to_string(),
                    ..Default::default()
                });
                self.stages.len() - 1
            });
        &mut self.stages[i]
    }

    pub fn pass(&mut self, stage: &str, bytes_in: u64, bytes_out: u64) {
        let s = self.stage(stage);
        s.docs_in += 1;
        s.docs_out += 1;
        s.bytes_in += bytes_in;
        s.bytes_out += bytes_out;
    }

    pub fn drop(&mut self, stage: &str, reason: &str, bytes_in: u64) {
        let s = self.stage(stage);
        s.docs_in += 1;
        s.bytes_in += bytes_in;
        *s.dropped.entry(reason.to_string()).or_insert(0) += 1;
    }

    pub fn note(&mut self, stage: &str, note: &str, n: u64) {
        *self.stage(stage).notes.entry(note.to_string()).or_insert(0) += n;
    }

    pub fn merge(&mut self, other: &Stats) {
        for o in &other.stages {
            let s = self.stage(&o.stage);
            s.docs_in += o.docs_in;
            s.docs_out += o.docs_out;
            s.bytes_in += o.bytes_in;
            s.bytes_out += o.bytes_out;
            for (k, v) in &o.dropped {
                *s.dropped.entry(k.clone()).or_insert(0) += v;
            }
            for (k, v) in &o.notes {
                *s.notes.entry(k.clone()).or_insert(0) += v;
            }
        }
    }

    /// A fixed-width table, one row per stage, reasons beside it.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<18} {:>9} {:>9} {:>7} {:>11} {:>11}  reasons / notes\n",
            "stage", "docs in", "docs out", "kept", "MB in", "MB out"
        );
        for s in &self.stages {
            let kept = if s.docs_in > 0 {
                format!("{:.1}%", 100.0 * s.docs_out as f64 / s.docs_in as f64)
            } else {
                "-".into()
            };
            let mut reasons: Vec<(&String, &u64)> = s.dropped.iter().collect();
            reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let mut detail: Vec<String> = reasons.iter().map(|(k, v)| format!("{k}={v}")).collect();
            detail.extend(s.notes.iter().map(|(k, v)| format!("({k}={v})")));
            out.push_str(&format!(
                "{:<18} {:>9} {:>9} {:>7} {:>11.3} {:>11.3}  {}\n",
                s.stage,
                s.docs_in,
                s.docs_out,
                kept,
                s.bytes_in as f64 / 1e6,
                s.bytes_out as f64 / 1e6,
                detail.join(" ")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sums_and_table_lists_reasons() {
        let mut a = Stats::default();
        a.pass("read", 100, 100);
        a.drop("language", "language_not_kept", 50);
        let mut b = Stats::default();
        b.drop("language", "language_not_kept", 10);
        b.note("read", "warc_request_records", 3);
        a.merge(&b);
        let lang = a.stages.iter().find(|s| s.stage == "language").unwrap();
        assert_eq!(
            (
                lang.docs_in,
                lang.docs_out,
                lang.dropped["language_not_kept"]
            ),
            (2, 0, 2)
        );
        let t = a.table();
        assert!(
            t.contains("language_not_kept=2") && t.contains("(warc_request_records=3)"),
            "{t}"
        );
    }
}
