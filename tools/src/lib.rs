//! The `shardann` command line, as a library so tests can call [`run`].
//!
//! Results go to the `out` writer (stdout); progress bars and notes go to
//! stderr and are hidden when stderr is not a terminal.

mod bench;
mod build;
mod churn;
mod cli;
mod cluster;
mod data;
mod demo;
mod embed;
mod eval;
mod inspect;
mod plan;
mod progress;
mod search;
mod serve;
mod util;
mod writes;

use std::ffi::OsString;
use std::io::Write;

use clap::Parser;

pub use bench::{BenchReport, RunReport};
pub use cli::Cli;
pub use eval::{EvalReport, Method, MethodReport, Retriever, Signal};

/// Parses `args` (including the program name) and runs the command.
pub fn run<I, T>(args: I, out: &mut dyn Write) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = cli::Cli::try_parse_from(args)?;
    cli::dispatch(cli, out)
}

/// An error and its causes on one line, `a: b: c`, leaving out a cause
/// whose text the message already ends with (the engine's errors name their
/// file and repeat their source's text; printed through anyhow's `{:#}`
/// every such cause would appear twice).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.ends_with(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}
