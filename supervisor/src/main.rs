//! chaarfm-super: one ChaarFM ingestion worker per machine.

mod cli;
mod embed;
mod ingest;
mod launch;
mod logging;
mod pool;
mod private_dir;
mod server;
mod signals;
mod sizing;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, cli.verbose);
    if let Some(Command::Child(args)) = &cli.command {
        return child(args, cli.model.as_deref());
    }
    // One TLS provider for the WebSocket and downloads (ring; see Cargo.toml).
    let _ = rustls::crypto::ring::default_provider().install_default();
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
            Some(Command::Embed(args)) => embed::run(args, cli.model.as_deref()).await,
            Some(Command::Ingest(args)) => {
                ingest::run(args, cli.model.as_deref()).await.map(|()| true)
            }
            Some(Command::Child(_)) => unreachable!("handled above"),
            None => connect(&cli.connect, cli.model.as_deref())
                .await
                .map(|()| true),
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

/// Connect mode: the pairing code from the flag, the environment, or a prompt.
async fn connect(args: &cli::ConnectArgs, model: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let code = match args.code.clone().filter(|c| !c.trim().is_empty()) {
        Some(c) => c.trim().to_string(),
        None if std::io::stdin().is_terminal() => {
            eprint!("Pairing code (from the /ingest page): ");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim().to_string()
        }
        None => anyhow::bail!("no pairing code: pass --code CODE or set CHAARFM_CODE (run `chaarfm-super --help` for the commands)"),
    };
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let started = launch::start_pool(&args.pool, model)?;
    let opts = server::Options {
        base: args.url.clone(),
        code,
        lanes: args.lanes == cli::Lanes::Auto,
        state_dir,
    };
    let result = server::run(opts, started.pool.clone(), started.children).await;
    // On every path, errors included: stop the children before waiting for the pool.
    started.pool.shutdown().await;
    let _ = started.task.await;
    result
}

/// `$XDG_STATE_HOME/chaarfm-super` or `~/.local/state/chaarfm-super` (macOS: Application
/// Support; Windows: %LOCALAPPDATA%).
fn default_state_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    let home = || {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
    };
    let base = if cfg!(windows) {
        std::env::var_os("LOCALAPPDATA")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
    } else if cfg!(target_os = "macos") {
        home().join("Library/Application Support")
    } else {
        std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| home().join(".local/state"))
    };
    base.join("chaarfm-super")
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
