//! `fcdnode` binary: parse, set up logging, run one command, map the error to an exit code.

mod bench;
mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // SAFETY: first statement of main, no other thread exists yet.
    unsafe { fcdnode::infer::runtime::switch_off_telemetry() };
    let cli = cli::Cli::parse();
    if let Err(e) = fcdnode::init_logging(cli.default_log_filter(), &cli.log) {
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
