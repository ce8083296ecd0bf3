//! Human output: aligned tables and their cells, with colour only for a person at a terminal.
//! May import: crate::errors, crate::out.
//!
//! Colour follows the usual convention: only when stdout is a TTY and `NO_COLOR` is unset (or
//! empty), so pipes, files and golden tests get plain text.

use std::io::IsTerminal;

const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const RESET: &str = "\x1b[0m";

/// Whether output on a stream with this TTY-ness gets colour, given `NO_COLOR`'s value.
pub fn colour_wanted(is_tty: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_tty && no_color.is_none_or(|v| v.is_empty())
}

/// Whether stdout gets colour.
pub fn stdout_colour() -> bool {
    colour_wanted(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// Whether stderr gets colour.
pub fn stderr_colour() -> bool {
    colour_wanted(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
#[cfg(test)]
pub fn format_table(rows: &[Vec<String>]) -> String {
    format_table_styled(rows, false)
}

/// Like [`format_table`]; with `colour`, the header row is bold and yes/no cells are green/red.
/// Widths are computed on the plain text so colour never changes the alignment.
pub fn format_table_styled(rows: &[Vec<String>], colour: bool) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let last = c + 1 == r.len();
            let pad = if last {
                0
            } else {
                widths[c].saturating_sub(cell.chars().count()) + 2
            };
            let style = match (colour, i, cell.as_str()) {
                (false, _, _) => None,
                (true, 0, _) => Some(BOLD),
                (true, _, "yes") => Some(GREEN),
                (true, _, "no") => Some(RED),
                _ => None,
            };
            match style {
                Some(s) => {
                    line.push_str(s);
                    line.push_str(cell);
                    line.push_str(RESET);
                }
                None => line.push_str(cell),
            }
            line.push_str(&" ".repeat(pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Prints a table to stdout, coloured when stdout is a terminal.
pub fn print_table(rows: &[Vec<String>]) -> Result<(), crate::errors::CliError> {
    out!("{}", format_table_styled(rows, stdout_colour()))
}

/// `yes` or `no`.
pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `s`, or `-` when it is empty (an absent value in a table cell).
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

/// A table row of fixed cells.
pub fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|s| (*s).to_owned()).collect()
}

/// `error` in red on a terminal: the prefix of gpuvirtctl's failure messages.
pub fn error_prefix() -> String {
    if stderr_colour() {
        format!("{RED}{BOLD}error{RESET}")
    } else {
        "error".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![row(&["A", "BB", "C"]), row(&["aaa", "b", "c"])];
        assert_eq!(format_table(&rows), "A    BB  C\naaa  b   c\n");
    }

    #[test]
    fn colour_keeps_alignment_and_marks_header_and_yes_no() {
        let rows = vec![row(&["A", "OK", "C"]), row(&["aaa", "yes", "c"])];
        let coloured = format_table_styled(&rows, true);
        let plain: String = {
            let mut s = coloured.clone();
            for code in [BOLD, RED, GREEN, RESET] {
                s = s.replace(code, "");
            }
            s
        };
        assert_eq!(plain, format_table(&rows));
        assert!(coloured.starts_with(BOLD));
        assert!(coloured.contains(&format!("{GREEN}yes{RESET}")));
    }

    #[test]
    fn colour_only_on_a_tty_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, None));
    }
}
