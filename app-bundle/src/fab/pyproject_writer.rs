//! `pyproject.toml` written back the way Flower writes it into a FAB (Python's `tomli_w`, with
//! its defaults): tables in document order, a header only for tables with values of their own
//! (or none at all), arrays one item per line, strings in double quotes, floats as Python prints
//! them. The FAB's hash covers these bytes, so every rule matters.

use std::fmt::Write as _;
use toml::{Table, Value};

/// Longest line an inline table in an array may take before it is written as `[[table]]`.
const MAX_LINE_LENGTH: usize = 100;

/// Indentation of array items.
const INDENT: &str = "    ";

/// `table` as `tomli_w.dumps` writes it.
pub fn dumps(table: &Table) -> String {
    let mut out = String::new();
    write_table(&mut out, table, "", false);
    out
}

/// Whether `value` is an array of tables (non-empty, tables only).
fn is_array_of_tables(value: &Value) -> bool {
    matches!(value, Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_table))
}

fn fits_inline(table: &Table) -> bool {
    let rendered = format!("{INDENT}{},", inline_table(table));
    rendered.chars().count() <= MAX_LINE_LENGTH && !rendered.contains('\n')
}

/// Writes one table; returns nothing, but mirrors tomli_w's `gen_table_chunks`.
fn write_table(out: &mut String, table: &Table, name: &str, inside_array: bool) {
    let mut literals = Vec::new();
    let mut tables: Vec<(&String, &Table, bool)> = Vec::new();
    for (key, value) in table {
        match value {
            Value::Table(inner) => tables.push((key, inner, false)),
            Value::Array(items)
                if is_array_of_tables(value)
                    && !items.iter().filter_map(Value::as_table).all(fits_inline) =>
            {
                tables.extend(
                    items
                        .iter()
                        .filter_map(Value::as_table)
                        .map(|t| (key, t, true)),
                );
            }
            _ => literals.push((key, value)),
        }
    }
    let mut written = false;
    if inside_array || (!name.is_empty() && (!literals.is_empty() || tables.is_empty())) {
        written = true;
        if inside_array {
            let _ = writeln!(out, "[[{name}]]");
        } else {
            let _ = writeln!(out, "[{name}]");
        }
    }
    for (key, value) in &literals {
        written = true;
        let _ = writeln!(out, "{} = {}", key_part(key), literal(value, 0));
    }
    for (key, inner, in_array) in tables {
        if written {
            out.push('\n');
        } else {
            written = true;
        }
        let key = key_part(key);
        let display = if name.is_empty() {
            key
        } else {
            format!("{name}.{key}")
        };
        write_table(out, inner, &display, in_array);
    }
}

fn literal(value: &Value, nest: usize) -> String {
    match value {
        Value::Boolean(b) => b.to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => python_float(*f),
        Value::String(s) => basic_string(s),
        Value::Datetime(d) => python_datetime(d),
        Value::Array(items) => inline_array(items, nest),
        Value::Table(table) => inline_table(table),
    }
}

fn inline_array(items: &[Value], nest: usize) -> String {
    if items.is_empty() {
        return "[]".to_string();
    }
    let item_indent = INDENT.repeat(nest + 1);
    let closing = INDENT.repeat(nest);
    let lines: Vec<String> = items
        .iter()
        .map(|item| format!("{item_indent}{}", literal(item, nest + 1)))
        .collect();
    format!("[\n{},\n{closing}]", lines.join(",\n"))
}

fn inline_table(table: &Table) -> String {
    if table.is_empty() {
        return "{}".to_string();
    }
    let pairs: Vec<String> = table
        .iter()
        .map(|(k, v)| format!("{} = {}", key_part(k), literal(v, 0)))
        .collect();
    format!("{{ {} }}", pairs.join(", "))
}

fn key_part(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare {
        key.to_string()
    } else {
        basic_string(key)
    }
}

/// A TOML basic string with tomli_w's escapes: the compact ones where TOML has them, `\uXXXX`
/// for other control characters; tabs and everything else as they are.
fn basic_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\u{8}' => out.push_str("\\b"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push('\t'),
            c if (c as u32) < 32 || c as u32 == 127 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A float as Python's `str` writes it: the shortest digits that read back the same, in
/// positional notation for exponents from -4 to 15 (always with a fractional part), otherwise
/// as `d.ddde+XX`.
pub fn python_float(value: f64) -> String {
    if value.is_nan() {
        return "nan".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits: "1.5e16", "-2.5e-1", "0e0".
    let scientific = format!("{:e}", value);
    let (mantissa, exponent) = scientific
        .split_once('e')
        .unwrap_or((scientific.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exponent) {
        let point = exponent + 1;
        let positional = if point <= 0 {
            format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            let (whole, fraction) = digits.split_at(point as usize);
            format!("{whole}.{fraction}")
        };
        format!("{sign}{positional}")
    } else {
        let (first, rest) = digits.split_at(1);
        let mantissa = if rest.is_empty() {
            first.to_string()
        } else {
            format!("{first}.{rest}")
        };
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        format!(
            "{sign}{mantissa}e{exponent_sign}{:02}",
            exponent.unsigned_abs()
        )
    }
}

/// A TOML date or time as Python's `str` writes the object `tomllib` reads it as.
fn python_datetime(value: &toml::value::Datetime) -> String {
    value
        .to_string()
        .replacen('T', " ", 1)
        .replace('Z', "+00:00")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_pythons_str() {
        for (value, python) in [
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (1.5e16, "1.5e+16"),
            (2.0, "2.0"),
            (-0.25, "-0.25"),
            (0.0001, "0.0001"),
            (123456789012345.6, "123456789012345.6"),
            (1e16, "1e+16"),
            (1e22, "1e+22"),
            (-1.5e-7, "-1.5e-07"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (f64::INFINITY, "inf"),
            (100.0, "100.0"),
        ] {
            assert_eq!(python_float(value), python, "{value}");
        }
    }

    #[test]
    fn tables_arrays_and_strings_follow_tomli_w() {
        let table: Table = toml::from_str(
            "top = 1\n[a]\nlist = ['x', 'y']\nempty = []\n[a.b.c]\nq = \"tab\\tquote\\\"\"\n[d]\n'odd key' = { k = 1 }\n",
        )
        .unwrap();
        assert_eq!(
            dumps(&table),
            "top = 1\n\n[a]\nlist = [\n    \"x\",\n    \"y\",\n]\nempty = []\n\n[a.b.c]\nq = \"tab\tquote\\\"\"\n\n[d.\"odd key\"]\nk = 1\n"
        );
    }
}
