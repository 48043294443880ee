//! The `dorun` binary: parse the command line, set up logging, run.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = dorun::cli::Cli::parse();
    dorun::cli::init_logging(&cli);
    // Every resident Durable Object with storage keeps its SQLite file (and WAL) open.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!("open file limit: {limit}"),
        Err(error) => tracing::warn!("cannot raise the open file limit: {error}"),
    }
    dorun::cli::run(cli)
}
