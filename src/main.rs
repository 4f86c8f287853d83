//! The `holdfast` command: parse arguments, run, print the error chain once,
//! exit with the code the outcome stands for (see `exit`).

use std::process::ExitCode;

use holdfast::exit::Exit;

fn main() -> ExitCode {
    let exit = match holdfast::cli::run() {
        Ok(exit) => exit,
        // The reader of our output went away (`holdfast ls | head`): not
        // an error worth a word.
        Err(e) if is_broken_pipe(&e) => Exit::Success,
        Err(e) => {
            // Names in the chain come from file systems and repositories:
            // none may move the cursor or colour the terminal.
            eprintln!("holdfast: error: {}", holdfast::units::escape_message(&holdfast::units::error_text(&e)));
            Exit::of_error(&e, None)
        }
    };
    ExitCode::from(exit.code())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>().and_then(|j| j.io_error_kind()) == Some(std::io::ErrorKind::BrokenPipe)
            || matches!(c.downcast_ref::<holdfast::Error>(), Some(holdfast::Error::Io { error, .. }) if error.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
