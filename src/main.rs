//! The `holdfast` command: parse arguments, run, print the error chain once.

use std::process::ExitCode;

fn main() -> ExitCode {
    match holdfast::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("holdfast: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
