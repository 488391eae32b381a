//! `fcdtrain` binary: parse, set up logging, run one command, map the error to an exit code.
//!
//! - [`cli`]: the command line and what each command does (the cv report is written here).
//! - [`bench`]: `fcdtrain bench step` (timing a training step; no files).

mod bench;
mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // SAFETY: first statement of main, no other thread exists yet.
    unsafe { fcdnode::infer::runtime::switch_off_telemetry() };
    let cli = cli::Cli::parse();
    if let Err(e) = fcdnode::init_logging("warn", &cli.log) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", fcdnode::error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}
