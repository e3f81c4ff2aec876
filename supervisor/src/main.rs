//! chaarfm-super: one ChaarFM ingestion worker per machine.

mod cli;
mod embed;
mod ingest;
mod launch;
mod logging;
mod pool;
mod signals;
mod sizing;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, cli.verbose);
    if let Command::Child(args) = &cli.command {
        return child(args, cli.model.as_deref());
    }
    // One thread: the supervisor only moves bytes and waits; children do the computing.
    // Children are forked from this (main) thread, which lives as long as the process, so
    // their PR_SET_PDEATHSIG fires exactly when the supervisor dies.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        match &cli.command {
            Command::Embed(args) => embed::run(args, cli.model.as_deref()).await,
            Command::Ingest(args) => ingest::run(args, cli.model.as_deref()).await.map(|()| true),
            Command::Child(_) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Hidden `__child` mode: serve jobs for the supervisor that started us.
fn child(args: &cli::ChildArgs, model: Option<&std::path::Path>) -> ExitCode {
    use chaarfm_child::serve;
    let Some(model) = model else {
        eprintln!("error: __child needs --model");
        return ExitCode::from(2);
    };
    let device = match args.device.strip_prefix("cuda:").map(str::parse::<u32>) {
        None => chaarfm_child::Device::Cpu,
        Some(Ok(i)) => chaarfm_child::Device::Cuda(i),
        Some(Err(_)) => {
            eprintln!("error: bad --device {}", args.device);
            return ExitCode::from(2);
        }
    };
    let code = serve::run(serve::ServeArgs {
        socket: args.socket.clone(),
        parent_pid: args.parent_pid,
        model: model.to_path_buf(),
        device,
        threads: args.threads,
        batch: args.batch,
    });
    ExitCode::from(code.clamp(0, 255) as u8)
}
