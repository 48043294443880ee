//! The `dorun` binary: parse the command line, set up logging, run.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = dorun::cli::Cli::parse();
    dorun::cli::init_logging(&cli);
    dorun::cli::run(cli)
}
