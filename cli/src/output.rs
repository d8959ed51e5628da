//! Output for people (tables, colour on a terminal only) and for programs (`--format json`).

use std::io::IsTerminal as _;

/// How a command prints its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Tables and sentences.
    #[default]
    Default,
    /// One JSON document on stdout; with --stream, one JSON document per line (JSON Lines).
    /// Ids are strings: they exceed 2^53, where JSON numbers lose digits.
    Json,
}

/// The pager a long table goes through on a terminal: `$FLWR_PAGER`, else `$PAGER`, else
/// `less -FRX` (which prints a table that fits the screen and exits, and keeps colour). An empty
/// value or `cat` turns paging off.
fn pager_command(flwr_pager: Option<String>, pager: Option<String>) -> Option<Vec<String>> {
    let chosen = flwr_pager
        .or(pager)
        .unwrap_or_else(|| "less -FRX".to_string());
    let words: Vec<String> = chosen.split_whitespace().map(str::to_string).collect();
    match words.first().map(String::as_str) {
        None | Some("cat") => None,
        Some(_) => Some(words),
    }
}

/// Prints `text`: through a pager when stdout is a terminal (so a table of ten thousand nodes
/// can be scrolled, as `git log` is), straight otherwise or when no pager can start.
pub fn print_paged(text: &str) {
    use std::io::Write as _;
    let command = std::io::stdout()
        .is_terminal()
        .then(|| {
            pager_command(
                std::env::var("FLWR_PAGER").ok(),
                std::env::var("PAGER").ok(),
            )
        })
        .flatten();
    if let Some(words) = command
        && let Ok(mut child) = std::process::Command::new(&words[0])
            .args(&words[1..])
            .stdin(std::process::Stdio::piped())
            .spawn()
    {
        if let Some(mut stdin) = child.stdin.take() {
            // A pager quit before the end closes the pipe: nothing is left to show.
            let _ = stdin.write_all(text.as_bytes());
        }
        let _ = child.wait();
        return;
    }
    print!("{text}");
}

pub use wire::control_json::{elapsed, timestamp};

/// Wraps `text` in an ANSI colour when stdout is a terminal and `NO_COLOR` is unset.
pub fn paint(text: &str, colour: u8) -> String {
    if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        format!("\x1b[{colour}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// ANSI colour codes used for statuses.
pub mod colour {
    /// Green.
    pub const GREEN: u8 = 32;
    /// Yellow.
    pub const YELLOW: u8 = 33;
    /// Red.
    pub const RED: u8 = 31;
    /// Grey.
    pub const GREY: u8 = 90;
}

/// Flower's table look (rich's heavy header) in comfy-table's preset notation: light borders
/// and columns, a heavy rule under the header, no rules between rows.
const FLOWER_STYLE: &str = "││──┝━┿┥│    ┬┴┌┐└┘";

/// A box-drawn table like Flower's. On a terminal it fits the terminal's width, wrapping long
/// cells; colour sequences in cells do not count towards widths.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(FLOWER_STYLE)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_header(headers.iter().copied());
    for row in rows {
        table.add_row(row.iter().map(String::as_str));
    }
    format!("{table}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pager_follows_flwr_pager_then_pager_and_cat_or_empty_turns_it_off() {
        let words = |v: &[&str]| Some(v.iter().map(|w| w.to_string()).collect::<Vec<_>>());
        assert_eq!(pager_command(None, None), words(&["less", "-FRX"]));
        assert_eq!(pager_command(None, Some("more".into())), words(&["more"]));
        assert_eq!(
            pager_command(Some("less -S".into()), Some("more".into())),
            words(&["less", "-S"])
        );
        assert_eq!(pager_command(Some("cat".into()), None), None);
        assert_eq!(
            pager_command(Some(String::new()), Some("more".into())),
            None
        );
    }

    #[test]
    fn elapsed_formats_hours_minutes_seconds() {
        assert_eq!(elapsed(0, 3_723_000), "01:02:03");
        assert_eq!(elapsed(10, 5), "00:00:00");
    }

    #[test]
    fn timestamps_are_utc_and_readable() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00Z");
    }

    /// Visible width of a line, ignoring ANSI colour sequences.
    fn visible_width(line: &str) -> usize {
        let mut width = 0;
        let mut in_escape = false;
        for c in line.chars() {
            match (in_escape, c) {
                (false, '\x1b') => in_escape = true,
                (true, 'm') => in_escape = false,
                (true, _) => {}
                (false, _) => width += 1,
            }
        }
        width
    }

    #[test]
    fn table_columns_align_ignoring_colour() {
        let text = table(&["A", "B"], &[vec!["\x1b[32mxx\x1b[0m".into(), "y".into()]]);
        let widths: Vec<usize> = text.lines().map(visible_width).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{text}");
    }

    #[test]
    fn tables_have_flowers_heavy_header_rule() {
        let text = table(&["Node ID", "Owner"], &[vec!["1".into(), "local".into()]]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[0].starts_with('┌') && lines[2].starts_with('┝'),
            "{text}"
        );
        assert!(
            lines[2].contains('━') && lines[4].starts_with('└'),
            "{text}"
        );
        assert!(
            lines[1].contains("Node ID") && lines[3].contains("local"),
            "{text}"
        );
    }
}
