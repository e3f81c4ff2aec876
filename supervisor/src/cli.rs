//! Command line: `chaarfm-super [GLOBAL] <command>`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "chaarfm-super",
    version,
    about = "One ChaarFM ingestion worker per machine"
)]
pub struct Cli {
    /// Model file (default: CHAARFM_MODEL, the user cache dir, ../shared/models).
    #[arg(long, global = true, value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Embed audio files: one JSON line per file on stdout.
    Embed(EmbedArgs),
}

#[derive(Debug, clap::Args)]
pub struct EmbedArgs {
    /// Also print the five strongest MSD tags per file.
    #[arg(long)]
    pub tags: bool,

    /// Audio files.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}
