//! Typed configuration values, as Flower's `--node-config` and `--run-config` take them:
//! `'dataset-path="datasets/part_1" batch-size=32 lr=0.01 debug=true'`. Each value is TOML, so
//! strings are quoted and numbers and booleans keep their types.

use thiserror::Error;
use wire::{ConfigRecord, ConfigValue};

/// A malformed configuration string or table.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    /// A token was not `key=value`.
    #[error("expected key=value, got {0:?}")]
    NotAPair(String),
    /// The value is not a TOML string, integer, float or boolean.
    #[error("value of {key:?} is not a TOML string, number or boolean: {value}")]
    BadValue {
        /// The key.
        key: String,
        /// The offending text.
        value: String,
    },
    /// A quote was opened and never closed.
    #[error("unterminated quote in {0:?}")]
    Unterminated(String),
}

/// Splits on whitespace (and commas) outside double or single quotes.
fn tokens(text: &str) -> Result<Vec<String>, ConfigError> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        match quote {
            Some(q) => {
                current.push(c);
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                current.push(c);
            }
            None if c.is_whitespace() || c == ',' => {
                if !current.is_empty() {
                    tokens.push(std::mem::take(&mut current));
                }
            }
            None => current.push(c),
        }
    }
    if quote.is_some() {
        return Err(ConfigError::Unterminated(text.to_string()));
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    Ok(tokens)
}

/// Converts one TOML value; tables and arrays are not configuration values.
pub fn from_toml(value: &toml::Value) -> Option<ConfigValue> {
    match value {
        toml::Value::String(s) => Some(ConfigValue::Str(s.clone())),
        toml::Value::Integer(i) => Some(ConfigValue::Int(*i)),
        toml::Value::Float(f) => Some(ConfigValue::Float(*f)),
        toml::Value::Boolean(b) => Some(ConfigValue::Bool(*b)),
        _ => None,
    }
}

/// Parses `k1=v1 k2=v2 ...` into an ordered record.
pub fn parse_overrides(text: &str) -> Result<ConfigRecord, ConfigError> {
    let mut record = ConfigRecord::new();
    for token in tokens(text)? {
        let (key, value) = token
            .split_once('=')
            .ok_or_else(|| ConfigError::NotAPair(token.clone()))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(ConfigError::NotAPair(token.clone()));
        }
        let bad = || ConfigError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
        };
        let document: toml::Table = toml::from_str(&format!("v = {value}")).map_err(|_| bad())?;
        let parsed = document.get("v").and_then(from_toml).ok_or_else(bad)?;
        record.insert(key, parsed);
    }
    Ok(record)
}

/// A TOML table of scalars as a record (for example `[app.config]` of `flwr.toml`).
pub fn from_table(table: &toml::Table) -> Result<ConfigRecord, ConfigError> {
    let mut record = ConfigRecord::new();
    for (key, value) in table {
        let parsed = from_toml(value).ok_or_else(|| ConfigError::BadValue {
            key: key.clone(),
            value: value.to_string(),
        })?;
        record.insert(key.clone(), parsed);
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_toml_types() {
        let record =
            parse_overrides(r#"dataset-path="datasets/a b" batch-size=32 lr=0.01 debug=true"#)
                .unwrap();
        assert_eq!(
            record.get("dataset-path"),
            Some(&ConfigValue::Str("datasets/a b".into()))
        );
        assert_eq!(record.get("batch-size"), Some(&ConfigValue::Int(32)));
        assert_eq!(record.get("lr"), Some(&ConfigValue::Float(0.01)));
        assert_eq!(record.get("debug"), Some(&ConfigValue::Bool(true)));
    }

    #[test]
    fn malformed_input_is_a_typed_error() {
        assert!(matches!(
            parse_overrides("novalue"),
            Err(ConfigError::NotAPair(_))
        ));
        assert!(matches!(
            parse_overrides("k=unquoted"),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            parse_overrides("k=\"open"),
            Err(ConfigError::Unterminated(_))
        ));
        assert!(matches!(
            parse_overrides("=3"),
            Err(ConfigError::NotAPair(_))
        ));
        assert!(matches!(
            parse_overrides("k=[1,2]"),
            Err(ConfigError::BadValue { .. })
        ));
    }

    #[test]
    fn empty_input_is_an_empty_record() {
        assert!(parse_overrides("  ").unwrap().is_empty());
    }
}
