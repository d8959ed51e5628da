//! Each round's aggregated metrics, read from the run's log as it grows. Flower's strategies and
//! this project's (the SDK's loop, the built-in apps) log a round the same way: `[ROUND n/N]`,
//! then `└──> Aggregated MetricRecord: {'name': value, ...}` after training and again after
//! evaluation. Reading the log serves every kind of app alike (built-in, program, Flower's own
//! ServerApp) without a second channel for numbers the log already carries.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use wire::control::LogLine;

/// The marker before a round's metrics.
const METRICS: &str = "Aggregated MetricRecord: ";

/// The marker of a round's start.
const ROUND: &str = "[ROUND ";

/// Rounds seen so far, and where in the log to go on from.
#[derive(Debug, Default, Clone)]
pub struct RoundHistory {
    /// The next log line to read.
    pub next_line: u64,
    current: Option<u64>,
    rounds: BTreeMap<u64, Map<String, Value>>,
}

impl RoundHistory {
    /// Reads `lines` (those from [`Self::next_line`] on).
    pub fn feed(&mut self, lines: &[LogLine]) {
        for line in lines {
            if line.index < self.next_line {
                continue;
            }
            self.next_line = line.index + 1;
            if let Some(round) = round_start(&line.text) {
                self.current = Some(round);
            } else if let (Some(round), Some((_, dict))) =
                (self.current, line.text.split_once(METRICS))
            {
                self.rounds.entry(round).or_default().extend(numbers(dict));
            }
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

/// `n` from a line holding `[ROUND n/N]` (Flower's lines carry a level prefix before it).
fn round_start(text: &str) -> Option<u64> {
    let (_, rest) = text.split_once(ROUND)?;
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
            "  └──> Aggregated MetricRecord: {'eval_loss': 4.0000e-1, 'eval_acc': 8.5e-1}",
            "[ROUND 2/2]",
            "  └──> Aggregated MetricRecord: {\"it's\": 1, 'bad': x, 'after': 2}",
        ]);
        let mut history = RoundHistory::default();
        history.feed(&log[..3]);
        assert_eq!(history.entries().len(), 1);
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
        assert_eq!(history.next_line, 6);
    }

    #[test]
    fn metrics_before_any_round_and_malformed_lines_are_ignored() {
        let log = lines(&[
            "Aggregated MetricRecord: {'x': 1}",
            "[ROUND x/2]",
            "[ROUND 3/",
            "[ROUND 1/1]",
            "Aggregated MetricRecord: not a dict",
            "Aggregated MetricRecord: {'nan': nan, 'unterminated",
        ]);
        let mut history = RoundHistory::default();
        history.feed(&log);
        assert_eq!(history.entries(), vec![serde_json::json!({"round": 1})]);
    }
}
