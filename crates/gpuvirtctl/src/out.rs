//! Standard output that fails politely: `gpuvirtctl tree | head` closes the pipe early, and a
//! redirect can hit a full disk; `print!` would panic on either. [`out!`]/[`outln!`] return a
//! [`CliError::Output`] instead, which ends the command quietly for a closed pipe. May import:
//! crate::errors.

use std::io::Write;

use crate::errors::CliError;

/// Writes formatted text to standard output.
pub fn write_fmt(args: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    std::io::stdout()
        .lock()
        .write_fmt(args)
        .map_err(CliError::Output)
}

/// `print!` returning `Result<(), CliError>`.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::write_fmt(format_args!($($arg)*))
    };
}

/// `println!` returning `Result<(), CliError>`.
macro_rules! outln {
    () => {
        $crate::out::write_fmt(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `value` as pretty JSON and a newline, straight into a buffered standard output (no
/// whole-document string, no line-by-line flushes).
pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut stdout, value).map_err(|e| {
        if e.is_io() {
            CliError::Output(e.into())
        } else {
            CliError::Json(e)
        }
    })?;
    writeln!(stdout)
        .and_then(|()| stdout.flush())
        .map_err(CliError::Output)
}
