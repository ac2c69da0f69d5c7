//! Counters for `GET /metrics` in Prometheus' text format: requests by outcome, tokens, queue
//! depth, busy slots and a time-to-first-token histogram. Plain atomics: the HTTP threads and the
//! scheduler thread update them without locks, and a scrape reads a consistent-enough snapshot.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (seconds) of the time-to-first-token histogram's buckets.
const TTFT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How a generation request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// 4xx before it reached the scheduler.
    Invalid,
    QueueFull,
    /// The client went away.
    Cancelled,
    Timeout,
    Failed,
}

const OUTCOMES: [(Outcome, &str); 6] = [
    (Outcome::Ok, "ok"),
    (Outcome::Invalid, "invalid"),
    (Outcome::QueueFull, "queue_full"),
    (Outcome::Cancelled, "cancelled"),
    (Outcome::Timeout, "timeout"),
    (Outcome::Failed, "failed"),
];

#[derive(Default)]
pub struct Metrics {
    outcomes: [AtomicU64; 6],
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens whose cache a slot already held from an earlier request (not recomputed).
    pub cached_prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Tool calls the served model made (`kiln serve --tools`), refused ones included.
    pub tool_calls: AtomicU64,
    /// Requests accepted but not yet given a slot.
    pub queue_depth: AtomicU64,
    pub busy_slots: AtomicU64,
    pub slots: AtomicU64,
    ttft_buckets: [AtomicU64; TTFT_BUCKETS.len()],
    ttft_count: AtomicU64,
    /// Sum in microseconds (an integer so it can be an atomic).
    ttft_sum_us: AtomicU64,
}

impl Metrics {
    pub fn count(&self, o: Outcome) {
        let i = OUTCOMES.iter().position(|(x, _)| *x == o).unwrap_or(0);
        self.outcomes[i].fetch_add(1, Relaxed);
    }

    pub fn observe_ttft(&self, secs: f64) {
        for (b, &le) in self.ttft_buckets.iter().zip(&TTFT_BUCKETS) {
            if secs <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.ttft_count.fetch_add(1, Relaxed);
        self.ttft_sum_us.fetch_add((secs * 1e6) as u64, Relaxed);
    }

    /// The Prometheus exposition text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP kiln_requests_total Generation requests by outcome."
        );
        let _ = writeln!(s, "# TYPE kiln_requests_total counter");
        for ((_, name), c) in OUTCOMES.iter().zip(&self.outcomes) {
            let _ = writeln!(
                s,
                "kiln_requests_total{{outcome=\"{name}\"}} {}",
                c.load(Relaxed)
            );
        }
        let counters = [
            (
                "kiln_prompt_tokens_total",
                "Prompt tokens of the requests run (cached ones included).",
                &self.prompt_tokens,
            ),
            (
                "kiln_prompt_tokens_cached_total",
                "Prompt tokens a slot already held from an earlier request (not recomputed).",
                &self.cached_prompt_tokens,
            ),
            (
                "kiln_generated_tokens_total",
                "Tokens generated.",
                &self.generated_tokens,
            ),
            (
                "kiln_tool_calls_total",
                "Tool calls the model made (kiln serve --tools), refused ones included.",
                &self.tool_calls,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let gauges = [
            (
                "kiln_queue_depth",
                "Requests waiting for a slot.",
                &self.queue_depth,
            ),
            (
                "kiln_slots_busy",
                "KV-cache slots decoding.",
                &self.busy_slots,
            ),
            ("kiln_slots", "KV-cache slots.", &self.slots),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Relaxed)
            );
        }
        let name = "kiln_time_to_first_token_seconds";
        let _ = writeln!(
            s,
            "# HELP {name} From request accepted to first token sampled."
        );
        let _ = writeln!(s, "# TYPE {name} histogram");
        for (b, le) in self.ttft_buckets.iter().zip(TTFT_BUCKETS) {
            let _ = writeln!(s, "{name}_bucket{{le=\"{le}\"}} {}", b.load(Relaxed));
        }
        let count = self.ttft_count.load(Relaxed);
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            s,
            "{name}_sum {}",
            self.ttft_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "{name}_count {count}");
        s
    }
}
