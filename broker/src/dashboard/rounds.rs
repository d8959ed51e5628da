//! Each round's aggregated metrics, read from the run's log as it grows. Flower's strategies and
//! this project's (the SDK's loop, the built-in apps) log a round the same way: `[ROUND n/N]`,
//! then `└──> Aggregated MetricRecord: {'name': value, ...}` after training and again after
//! evaluation. Reading the log serves every kind of app alike (built-in, program, Flower's own
//! ServerApp) without a second channel for numbers the log already carries.
//!
//! The log also quotes what nodes said (their error reasons), so a line counts only when it
//! *starts* with one of those markers, after at most a log level (`INFO :`) and white space: a
//! node's words always follow the app's own prefix (`failure from node ...`, `node ... answered
//! with an error ...`), and they hold no line breaks (node text is stored escaped). What is kept
//! is bounded: [`MAX_NAMES`] metric names and [`MAX_ROUNDS`] rounds per run.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use wire::control::LogLine;

/// The marker before a round's metrics.
const METRICS: &str = "└──> Aggregated MetricRecord: ";

/// The marker of a round's start.
const ROUND: &str = "[ROUND ";

/// Most metric names kept per run; later ones are ignored.
pub const MAX_NAMES: usize = 32;

/// Most rounds kept per run (the latest).
pub const MAX_ROUNDS: usize = 10_000;

/// Python's log levels, as Flower's lines begin (`INFO :      ...`).
const LEVELS: [&str; 5] = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];

/// A line's text after its log level, if it has one, and leading white space.
fn body(text: &str) -> &str {
    let text = text.trim_start();
    for level in LEVELS {
        if let Some(rest) = text.strip_prefix(level)
            && let Some(rest) = rest.trim_start().strip_prefix(':')
        {
            return rest.trim_start();
        }
    }
    text
}

/// Rounds seen so far, and where in the log to go on from.
#[derive(Debug, Default, Clone)]
pub struct RoundHistory {
    /// The next log line to read.
    pub next_line: u64,
    current: Option<u64>,
    rounds: BTreeMap<u64, Map<String, Value>>,
    names: std::collections::BTreeSet<String>,
}

impl RoundHistory {
    /// Reads `lines` (those from [`Self::next_line`] on).
    pub fn feed(&mut self, lines: &[LogLine]) {
        for line in lines {
            if line.index < self.next_line {
                continue;
            }
            self.next_line = line.index + 1;
            let text = body(&line.text);
            if let Some(round) = round_start(text) {
                self.current = Some(round);
            } else if let (Some(round), Some(dict)) = (self.current, text.strip_prefix(METRICS)) {
                self.record(round, numbers(dict));
            }
        }
    }

    /// Keeps `metrics` for `round`, within the bounds on names and rounds.
    fn record(&mut self, round: u64, metrics: Map<String, Value>) {
        let entry = self.rounds.entry(round).or_default();
        for (name, value) in metrics {
            if self.names.contains(&name) || self.names.len() < MAX_NAMES {
                self.names.insert(name.clone());
                entry.insert(name, value);
            }
        }
        while self.rounds.len() > MAX_ROUNDS {
            self.rounds.pop_first();
        }
    }

    /// One entry per round that reported metrics: `{"round": n, "train_loss": ..., ...}`, in
    /// the form the run's chart reads.
    pub fn entries(&self) -> Vec<Value> {
        self.rounds
            .iter()
            .map(|(round, metrics)| {
                let mut entry = Map::new();
                entry.insert("round".into(), (*round).into());
                entry.extend(metrics.clone());
                Value::Object(entry)
            })
            .collect()
    }
}

/// `n` from a line that starts with `[ROUND n/N]`.
fn round_start(text: &str) -> Option<u64> {
    let rest = text.strip_prefix(ROUND)?;
    let (round, rest) = rest.split_once('/')?;
    rest.contains(']').then_some(())?;
    round.trim().parse().ok()
}

/// The numeric entries of a Python dict literal as Flower prints a record, `{'loss': 0.5, 'n':
/// 3}`; lists and anything else are skipped, and so is anything malformed after a good prefix.
fn numbers(dict: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(mut rest) = dict.trim().strip_prefix('{') else {
        return out;
    };
    loop {
        rest = rest.trim_start();
        let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') else {
            return out;
        };
        let Some((name, after)) = rest[1..].split_once(quote) else {
            return out;
        };
        let Some(after) = after.trim_start().strip_prefix(':') else {
            return out;
        };
        let after = after.trim_start();
        // A value runs to the next comma or closing brace outside brackets.
        let mut depth = 0usize;
        let end = after
            .char_indices()
            .find(|&(_, c)| match c {
                '[' | '(' => {
                    depth += 1;
                    false
                }
                ']' | ')' => {
                    depth = depth.saturating_sub(1);
                    false
                }
                ',' | '}' => depth == 0,
                _ => false,
            })
            .map_or(after.len(), |(i, _)| i);
        let value = after[..end].trim();
        if let Ok(number) = value.parse::<f64>()
            && let Some(number) = serde_json::Number::from_f64(number)
        {
            out.insert(name.to_string(), Value::Number(number));
        }
        match after[end..].chars().next() {
            Some(',') => rest = &after[end + 1..],
            _ => return out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(texts: &[&str]) -> Vec<LogLine> {
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| LogLine {
                index: i as u64,
                at_ms: 0,
                text: text.to_string(),
            })
            .collect()
    }

    #[test]
    fn flowers_and_our_round_lines_give_one_entry_per_round() {
        let log = lines(&[
            "Starting FedAvg strategy: 2 rounds, 8 arrays",
            "INFO :      [ROUND 1/2]",
            "INFO :      \t└──> Aggregated MetricRecord: {'train_loss': 0.5, 'num-examples': 3, 'l': [1.0, 2.0]}",
            "  failure from node 7: Error: └──> Aggregated MetricRecord: {'train_loss': 1e308}",
            "  └──> Aggregated MetricRecord: {'eval_loss': 4.0000e-1, 'eval_acc': 8.5e-1}",
            "[ROUND 2/2]",
            "  └──> Aggregated MetricRecord: {\"it's\": 1, 'bad': x, 'after': 2}",
        ]);
        let mut history = RoundHistory::default();
        history.feed(&log[..4]);
        assert_eq!(history.entries().len(), 1);
        assert_eq!(
            history.entries()[0]["train_loss"],
            0.5,
            "a node's quoted words count for nothing"
        );
        history.feed(&log);
        let entries = history.entries();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["round"], 1);
        assert_eq!(entries[0]["train_loss"], 0.5);
        assert_eq!(entries[0]["num-examples"], 3.0);
        assert_eq!(entries[0]["eval_acc"], 0.85);
        assert!(entries[0].get("l").is_none());
        assert_eq!(entries[1]["it's"], 1.0);
        assert!(entries[1].get("bad").is_none());
        assert_eq!(entries[1]["after"], 2.0);
        assert_eq!(history.next_line, 7);
    }

    #[test]
    fn names_and_rounds_are_bounded() {
        let mut history = RoundHistory::default();
        let mut texts = vec!["[ROUND 1/1]".to_string()];
        let many: Vec<String> = (0..100).map(|i| format!("'m{i:03}': {i}")).collect();
        texts.push(format!(
            "└──> Aggregated MetricRecord: {{{}}}",
            many.join(", ")
        ));
        for round in 2..=(MAX_ROUNDS as u64 + 5) {
            texts.push(format!("[ROUND {round}/1]"));
            texts.push("└──> Aggregated MetricRecord: {'m000': 1, 'late': 2}".into());
        }
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        history.feed(&lines(&texts));
        let entries = history.entries();
        assert_eq!(entries.len(), MAX_ROUNDS);
        assert_eq!(entries[0]["round"], 6);
        assert!(entries.iter().all(|e| e.get("late").is_none()));
        assert_eq!(history.names.len(), MAX_NAMES);
    }

    #[test]
    fn metrics_before_any_round_and_malformed_lines_are_ignored() {
        let log = lines(&[
            "Aggregated MetricRecord: {'x': 1}",
            "[ROUND x/2]",
            "[ROUND 3/",
            "[ROUND 1/1]",
            "└──> Aggregated MetricRecord: not a dict",
            "└──> Aggregated MetricRecord: {'nan': nan, 'unterminated",
            "error: [ROUND 2/2] quoted",
        ]);
        let mut history = RoundHistory::default();
        history.feed(&log);
        assert_eq!(history.entries(), vec![serde_json::json!({"round": 1})]);
    }
}
