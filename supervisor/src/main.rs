//! chaarfm-super: one ChaarFM ingestion worker per machine.

mod ask;
mod backoff;
mod batch;
mod cli;
mod clock;
mod date;
mod doctor;
mod embed;
mod exit;
mod ingest;
mod launch;
mod logging;
mod os;
mod pool;
mod prefs;
mod server;
mod service;
mod signals;
mod sizing;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use exit::Exit;

use cli::{Cli, Command};

fn main() -> ExitCode {
    // The matches too: `service install` writes the options it was given back out.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(e) = logging::init(cli.log_format, cli.verbose, cli.log_file.as_deref()) {
        eprintln!("error: {e} (check --log-file)");
        return ExitCode::from(2);
    }
    if let Some(Command::Child(args)) = &cli.command {
        let code = child(args);
        logging::flush();
        return code;
    }
    let explorer = os::started_from_explorer();
    if explorer && cli.command.is_none() {
        logging::eprint(&explorer_hello());
    }
    let code = run(cli, &matches);
    if explorer {
        // Explorer closes the window when the process exits: keep the last words readable.
        logging::eprint("\nPress Enter to close this window.\n");
        logging::flush();
        let _ = std::io::stdin().read_line(&mut String::new());
    }
    code
}

/// Said once to someone who double-clicked the program: what this window is, and how
/// to have it start at every logon instead.
fn explorer_hello() -> String {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "chaarfm-super.exe".into());
    // Short lines: a new console is 80 columns wide.
    format!(
        "chaarfm-super {}: a ChaarFM ingestion worker.\n\
         It works while this window is open. Ctrl-C stops it cleanly,\n\
         handing unfinished jobs back.\n\n\
         To start it at every logon instead, run in a Command Prompt\n    \
         setx CHAARFM_CODE YOUR-CODE\n\
         then put a shortcut to\n    {exe}\n\
         in your Startup folder (Win+R, shell:startup). README.md says more.\n\n",
        env!("CARGO_PKG_VERSION")
    )
}

fn run(cli: Cli, matches: &clap::ArgMatches) -> ExitCode {
    // The runtime directory goes on every exit path, a panic's included.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        os::remove_runtime_dir();
        default_hook(info);
    }));
    if let Err(e) = os::contain_children() {
        tracing::warn!(error = %e, "cannot tie the children's lifetime to this process");
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
            logging::eprint(&format!("error: cannot start the async runtime: {e}\n"));
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        match &cli.command {
            Some(Command::Embed(args)) => embed::run(args, cli.model.as_deref()).await,
            Some(Command::Ingest(args)) => ingest::run(args, cli.model.as_deref()).await,
            Some(Command::Doctor(args)) => {
                doctor::run(args, cli.model.as_deref()).await.map(|code| {
                    if code == 0 {
                        Exit::Ok
                    } else {
                        Exit::SomeFailed
                    }
                })
            }
            Some(Command::Service(cmd)) => match cmd {
                cli::ServiceCommand::Install(a) => {
                    let install = (matches.subcommand_matches("service"))
                        .and_then(|m| m.subcommand_matches("install"));
                    service::install(a, install.unwrap_or(matches))
                }
                cli::ServiceCommand::Status(w) => service::status(w),
                cli::ServiceCommand::Uninstall(w) => service::uninstall(w),
            },
            Some(Command::Status(args)) => ask::run(args).await,
            Some(Command::Child(_)) => unreachable!("handled above"),
            None => connect(&cli.connect, cli.model.as_deref()).await,
        }
    });
    // Bounded: a cancelled direct download's blocking thread stops at its next read,
    // which may take up to the read timeout; the exit does not wait for it.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    os::helper::kill_all();
    os::remove_runtime_dir();
    let code = match result {
        Ok(Exit::Ok) => 0,
        Ok(Exit::SomeFailed) => 1,
        Ok(Exit::NotRunning) => 3,
        Ok(Exit::Lost(n)) => {
            logging::eprint(&format!(
                "error: {n} result(s) could be neither delivered nor saved (see above)\n"
            ));
            3
        }
        Err(e) => {
            logging::eprint(&format!("error: {e:#}\n"));
            2
        }
    };
    logging::flush();
    let dropped = logging::dropped();
    if dropped > 0 {
        // stderr was stalled or closed: say it where it may still be read.
        logging::eprint(&format!(
            "chaarfm-super: {dropped} log line(s) dropped because stderr was not being read\n"
        ));
    }
    ExitCode::from(code)
}

/// Connect mode: the pairing code from the flag, the environment, or a prompt.
async fn connect(args: &cli::ConnectArgs, model: Option<&std::path::Path>) -> anyhow::Result<Exit> {
    use std::io::IsTerminal;
    let code = match args.server.code.clone().filter(|c| !c.trim().is_empty()) {
        Some(c) => c.trim().to_string(),
        None if std::io::stdin().is_terminal() => {
            logging::eprint("Pairing code (from the /ingest page): ");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim().to_string()
        }
        None => anyhow::bail!("no pairing code: pass --code CODE or set CHAARFM_CODE (run `chaarfm-super --help` for the commands)"),
    };
    server::worker_url(&args.server.url, &code)?;
    if let Some(c) = &args.cookies {
        os::check_private_file(c)
            .map_err(|e| anyhow::anyhow!("refusing --cookies {}: {e}", c.display()))?;
    }
    let state_dir = args.state_dir.clone().unwrap_or_else(os::default_state_dir);
    // A bad preference is refused before anything starts, with its line.
    let prefs_source = prefs::monitor::Source {
        flags: args.prefs.layer(),
        path: args
            .prefs
            .config
            .clone()
            .unwrap_or_else(prefs::settings::default_path),
        required: args.prefs.config.is_some(),
    };
    let prefs = prefs_source.load()?;
    tracing::info!(config = %prefs_source.path.display(), "preferences: {}", prefs.summary());
    // Stop requests from here on end the run cleanly, start-up included.
    let signals = signals::Signals::new()?;
    let hangups = signals::Hangups::install();
    // One supervisor per state dir, before anything in it is touched.
    let _lock = os::lock_state_dir(&state_dir)?;
    let started = launch::start_pool(&args.pool, model, &state_dir)?;
    let opts = server::Options {
        base: args.server.url.clone(),
        code,
        lanes: args.lanes == cli::Lanes::Auto,
        allow_private_urls: args.allow_private_urls,
        state_dir,
        metrics: args.metrics,
        cookies: args.cookies.clone(),
        prefs,
        prefs_source,
        runtime_dir: started.runtime_dir.clone(),
    };
    let result = server::run(
        opts,
        started.pool.clone(),
        started.children,
        signals,
        hangups,
    )
    .await;
    // On every path, errors included: stop the children before waiting for the pool.
    started.pool.shutdown().await;
    let _ = started.task.await;
    result
}

/// Hidden `__child` mode: serve jobs for the supervisor that started us (which sends the
/// model and settings in the first frame).
fn child(args: &cli::ChildArgs) -> ExitCode {
    let code = chaarfm_child::serve::run(&args.socket);
    ExitCode::from(code.clamp(0, 255) as u8)
}
