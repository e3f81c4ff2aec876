//! Command line: `chaarfm-super [GLOBAL] <command>`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Parser, Subcommand, ValueEnum};

use crate::logging::LogFormat;
use crate::prefs::settings::{Busy, Hours, Layer, OnBattery};
use crate::sizing::{DeviceChoice, Workers};

#[derive(Debug, Parser)]
#[command(
    name = "chaarfm-super",
    version,
    about = "One ChaarFM ingestion worker per machine"
)]
pub struct Cli {
    /// Model file (default: CHAARFM_MODEL, then models/ beside the executable, then the
    /// user cache dir).
    #[arg(long, global = true, value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Log to this file instead of stderr, a new file each day (UTC); the last 7 days are
    /// kept as PATH.YYYY-MM-DD.
    #[arg(long, global = true, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Without a command: connect to ChaarFM and work its queue.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Connect mode (no subcommand): `chaarfm-super --code CODE [--workers auto]`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// Extra connections when the server gives one job per connection (today's server).
    #[arg(long, value_enum, default_value_t = Lanes::Auto)]
    pub lanes: Lanes,

    /// Where the outbox and downloads live (default: the user state dir).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Let jobs download from loopback, private (RFC 1918/4193), link-local and CGNAT
    /// addresses: off by default, so a server cannot make this worker probe its network.
    #[arg(long, env = "CHAARFM_ALLOW_PRIVATE_URLS")]
    pub allow_private_urls: bool,

    /// Serve Prometheus metrics at /metrics and a health check at /healthz on HOST:PORT
    /// (a bare port: loopback only). Off by default.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub metrics: Option<std::net::SocketAddr>,

    /// A cookies.txt of a browser signed in to YouTube, for machines YouTube asks to sign
    /// in ("confirm you're not a bot"); passed to yt-dlp, never logged. Must be readable
    /// by this user only (chmod 600).
    #[arg(long, env = "CHAARFM_COOKIES", value_name = "FILE")]
    pub cookies: Option<PathBuf>,

    #[command(flatten)]
    pub prefs: PrefsArgs,

    #[command(flatten)]
    pub pool: PoolArgs,
}

/// The computing preferences (`prefs`): when this machine lends its CPU. Each flag wins
/// over the same key in the config file.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Computing preferences (also keys of the config file)")]
pub struct PrefsArgs {
    /// The config file (default: ~/.config/chaarfm-super/config.toml, if it exists). It is
    /// read again when it changes, or on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// On battery power: pause (the default) or run.
    #[arg(long, value_enum)]
    pub on_battery: Option<OnBattery>,

    /// With --on-battery run: pause below this charge, resume 5 points above it
    /// (default 20).
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub battery_min_percent: Option<u8>,

    /// Pause while other programs use more than PERCENT of the CPU for a minute, resume
    /// after 2 minutes below it; `off` never pauses for that (default 25).
    #[arg(long, value_name = "PERCENT|off")]
    pub pause_when_busy: Option<Busy>,

    /// Work only between these local times, e.g. 22:00-07:00 ("" = at any hour, the
    /// default).
    #[arg(long, value_name = "HH:MM-HH:MM", value_parser = parse_hours)]
    pub hours: Option<HoursArg>,

    /// Pause while the state dir's disk has less free space than this, in GB (0: off;
    /// default 1).
    #[arg(long, value_name = "GB", value_parser = parse_gigabytes)]
    pub min_free_disk_gb: Option<f64>,
}

/// `--hours`: a window, or empty for any hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HoursArg(pub Option<Hours>);

fn parse_hours(s: &str) -> Result<HoursArg, String> {
    if s.trim().is_empty() {
        return Ok(HoursArg(None));
    }
    s.parse().map(|h| HoursArg(Some(h)))
}

fn parse_gigabytes(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?}: expected a number of GB, 0 or more")),
    }
}

impl PrefsArgs {
    /// The flags as a layer over the config file.
    pub fn layer(&self) -> Layer {
        Layer {
            on_battery: self.on_battery,
            battery_min_percent: self.battery_min_percent,
            pause_when_busy: self.pause_when_busy,
            hours: self.hours.map(|h| h.0),
            min_free_disk_gb: self.min_free_disk_gb,
        }
    }
}

impl ConnectArgs {
    /// The connect-mode options a service runs with: the state dir, then every option
    /// of `matches` (an `ArgMatches` holding these arguments) that was given, except
    /// the URL and the code (a service passes those through its environment file) and
    /// the preferences (its config file holds them).
    pub fn service_args(matches: &ArgMatches, state_dir: &Path) -> Vec<OsString> {
        let mut skip = ids::<ServerArgs>();
        skip.extend(ids::<PrefsArgs>());
        skip.push("state_dir".into());
        let mut v: Vec<OsString> = vec!["--state-dir".into(), state_dir.into()];
        v.extend(to_args::<ConnectArgs>(matches, &skip));
        v
    }
}

/// The ids of `A`'s arguments.
fn ids<A: clap::Args>() -> Vec<String> {
    let def = A::augment_args(clap::Command::new("args"));
    def.get_arguments()
        .map(|a| a.get_id().to_string())
        .collect()
}

/// The options that give `matches`' values of `A`'s arguments back when parsed: each
/// argument given on the command line or by the environment (a default stays the
/// default of whichever version runs), except those in `skip`. Read from clap's own
/// definitions, so a new option is carried without code here.
fn to_args<A: clap::Args>(matches: &ArgMatches, skip: &[String]) -> Vec<OsString> {
    let def = A::augment_args(clap::Command::new("args"));
    let mut out: Vec<OsString> = Vec::new();
    for arg in def.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long().filter(|_| !skip.iter().any(|s| s == id)) else {
            continue;
        };
        let given = matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !given {
            continue;
        }
        let flag = OsString::from(format!("--{long}"));
        match arg.get_action() {
            ArgAction::SetTrue => {
                if matches.get_flag(id) {
                    out.push(flag);
                }
            }
            ArgAction::Count => out.extend(std::iter::repeat_n(
                flag,
                usize::from(matches.get_count(id)),
            )),
            _ => {
                for value in matches.get_raw(id).into_iter().flatten() {
                    out.extend([flag.clone(), value.to_owned()]);
                }
            }
        }
    }
    out
}

/// Which ChaarFM server, and the pairing code for it (connect mode, `doctor`, `service`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// ChaarFM server.
    #[arg(
        long,
        env = "CHAARFM_URL",
        default_value = "https://chaarfm.onrender.com"
    )]
    pub url: String,

    /// Pairing code from the server's /ingest page (asked for on a terminal when missing;
    /// `doctor` checks it by connecting, then closing at once).
    #[arg(long, env = "CHAARFM_CODE", hide_env_values = true)]
    pub code: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lanes {
    Auto,
    Off,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Embed audio files: one JSON line per file on stdout, in order.
    Embed(EmbedArgs),
    /// Embed every audio file under PATHs into a JSON-lines file; resumable.
    Ingest(IngestArgs),
    /// Check that this machine can run the worker: one line per check, ok or what to do.
    Doctor(DoctorArgs),
    /// Run the worker as a service (systemd; launchd on macOS), started at boot or login.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Ask the running worker how it is doing: working, paused or disconnected, tracks
    /// done, failures, speed. Exits 3 when no worker runs with that state dir.
    Status(StatusArgs),
    /// Internal: serve as a child process of a supervisor.
    #[command(name = "__child", hide = true)]
    Child(ChildArgs),
}

/// How the pool of child processes is sized and limited.
#[derive(Debug, Clone, clap::Args)]
pub struct PoolArgs {
    /// Number of child processes: `auto` (from cores, memory and GPUs) or a count.
    #[arg(long, default_value = "auto", value_parser = parse_workers)]
    pub workers: Workers,

    /// Where inference runs; `cuda` falls back to CPU with a warning when unusable.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,

    /// Fixed per-job timeout in seconds (default: none; a job must instead report
    /// progress within 120 s, then every 60 s, one report per 30 s of audio).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub job_timeout: Option<u64>,

    /// Kill a child whose resident memory exceeds this (MB; default: available memory /
    /// children / 2, between 512 and 4096).
    #[arg(long, value_name = "MB", value_parser = parse_child_memory)]
    pub max_child_memory: Option<u64>,

    /// Replace a child after this many jobs (default: never).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_jobs_per_child: Option<u32>,

    /// How the model runs: `shared` (the timbral front-end once per track, ~1.75x faster)
    /// or `patch` (the whole model per patch, as Essentia does). Same vectors.
    #[arg(long, default_value = "shared", value_parser = parse_engine)]
    pub engine: chaarfm_child::Engine,

    /// CPU niceness of the children (Unix), 0-19: 10 by default, so a desktop stays
    /// responsive while they work and an idle machine still gives them every cycle; 0
    /// runs them at the supervisor's own priority. Never raises priority.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub child_nice: i32,
}

fn parse_engine(s: &str) -> Result<chaarfm_child::Engine, String> {
    s.parse()
}

/// A child needs ~100 MB idle (model and runtime loaded) and more while it works.
pub const MIN_CHILD_MEMORY_MB: u64 = 256;

fn parse_child_memory(s: &str) -> Result<u64, String> {
    let mb: u64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of megabytes"))?;
    if mb < MIN_CHILD_MEMORY_MB {
        return Err(format!(
            "{mb} MB is below what a child needs (~100 MB idle, more while working); give at least {MIN_CHILD_MEMORY_MB}"
        ));
    }
    Ok(mb)
}

fn parse_workers(s: &str) -> Result<Workers, String> {
    if s == "auto" {
        return Ok(Workers::Auto);
    }
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(Workers::Count(n)),
        _ => Err(format!("`{s}` is not `auto` or a number of workers >= 1")),
    }
}

#[derive(Debug, clap::Args)]
pub struct EmbedArgs {
    /// Also print the five strongest MSD tags per file.
    #[arg(long)]
    pub tags: bool,

    #[command(flatten)]
    pub pool: PoolArgs,

    /// Audio files.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Output file (JSON lines), appended to; files already in it are skipped.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Also store the five strongest MSD tags per file.
    #[arg(long)]
    pub tags: bool,

    #[command(flatten)]
    pub pool: PoolArgs,

    /// Audio files or folders (walked recursively).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write the unit (or agent) and the environment file holding the code, then enable
    /// and start it.
    Install(Box<ServiceInstallArgs>),
    /// Whether the service is installed and running, and its recent log.
    Status(ServiceWhich),
    /// Stop and disable the service and remove its files (the state dir stays: it may hold
    /// results not yet delivered).
    Uninstall(ServiceWhich),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServiceWhich {
    /// A user service (systemd --user; always on macOS) instead of a system one.
    #[arg(long)]
    pub user: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServiceInstallArgs {
    #[command(flatten)]
    pub which: ServiceWhich,

    /// Write the files only: do not call systemctl (or launchctl).
    #[arg(long)]
    pub no_enable: bool,

    /// Print the unit (or plist, code masked) instead of writing anything.
    #[arg(long, conflicts_with = "no_enable")]
    pub dry_run: bool,

    /// Connect-mode options for the service (the code goes in a 0600 file, never argv).
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The running worker's state dir (default: the user state dir, then a system
    /// service's).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// One JSON object (`state`: working, paused or disconnected; `reason`; `since`...).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// With --code: the server and the code are checked too.
    #[command(flatten)]
    pub server: ServerArgs,

    /// The state dir to check (default: the user state dir).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// One JSON document instead of lines.
    #[arg(long)]
    pub json: bool,

    /// The cookies.txt connect mode gets (`--cookies`), for the YouTube check.
    #[arg(long, env = "CHAARFM_COOKIES", value_name = "FILE")]
    pub cookies: Option<PathBuf>,

    #[command(flatten)]
    pub pool: PoolArgs,
}

#[derive(Debug, clap::Args)]
pub struct ChildArgs {
    /// The supervisor's local socket; the rest arrives in the first frame
    /// (`shared::ipc::Start`).
    #[arg(long)]
    pub socket: String,
}

/// `--metrics` value: `HOST:PORT`, or a bare port on loopback.
pub fn parse_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| {
        format!("`{s}` is not HOST:PORT or a port (e.g. 127.0.0.1:9464, or 9464 for loopback)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::proc::{child_args, start_frame};
    use crate::pool::ChildSpec;

    #[test]
    fn a_port_alone_means_loopback() {
        assert_eq!(parse_addr("9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(parse_addr("0.0.0.0:80").unwrap().to_string(), "0.0.0.0:80");
        assert!(parse_addr("localhost").unwrap_err().contains("HOST:PORT"));
    }

    #[test]
    fn the_child_command_line_round_trips_through_the_parser() {
        let socket = "/run/x/c0-1 é.sock";
        let mut argv = vec![std::ffi::OsString::from("chaarfm-super")];
        argv.extend(child_args(socket));
        let cli = Cli::try_parse_from(argv).unwrap();
        let Some(Command::Child(a)) = cli.command else {
            panic!("not parsed as the child command");
        };
        assert_eq!(a.socket, socket);
        // Everything else is the first frame's (round trip: shared::ipc's tests).
        let spec = ChildSpec {
            device: chaarfm_child::Device::Cuda(1),
            threads: 2,
            batch: 32,
            engine: chaarfm_child::Engine::Patch,
            nice: 7,
        };
        let model = PathBuf::from("/models/msd musicnn.onnx");
        let chaarfm_shared::ipc::ToChild::Start(start) = start_frame(&spec, &model) else {
            panic!("not a start frame");
        };
        assert_eq!(start.spec, spec);
        assert_eq!(start.model.to_path_buf(), model);
        assert_eq!(start.parent_pid, std::process::id());
    }

    #[test]
    fn a_service_gets_the_same_options_back_without_url_code_or_preferences() {
        use clap::{CommandFactory, FromArgMatches};
        let given = [
            "x",
            "--code",
            "SECRET1",
            "--url",
            "http://h",
            "--workers",
            "3",
            "--device",
            "cpu",
            "--engine",
            "patch",
            "--child-nice",
            "5",
            "--job-timeout",
            "90",
            "--max-child-memory",
            "800",
            "--max-jobs-per-child",
            "7",
            "--lanes",
            "off",
            "--allow-private-urls",
            "--metrics",
            "9464",
            "--cookies",
            "/home/a b/cookies.txt",
            "--state-dir",
            "/elsewhere",
            "--on-battery",
            "run",
            "--hours",
            "22:00-07:00",
        ];
        let matches = Cli::command().try_get_matches_from(given).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let args = ConnectArgs::service_args(&matches, Path::new("/var/lib/x y"));
        let text: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        for gone in [
            "SECRET1",
            "http://h",
            "/elsewhere",
            "--on-battery",
            "--hours",
        ] {
            assert!(!text.iter().any(|a| a.contains(gone)), "{gone} in {text:?}");
        }
        let mut argv = vec![OsString::from("x")];
        argv.extend(args);
        let back = Cli::try_parse_from(argv).unwrap().connect;
        assert_eq!(back.state_dir.as_deref(), Some(Path::new("/var/lib/x y")));
        // Everything else parses back to what was given.
        let same = |c: &ConnectArgs| {
            let c = ConnectArgs {
                state_dir: None,
                server: ServerArgs {
                    url: String::new(),
                    code: None,
                },
                prefs: PrefsArgs::default(),
                ..c.clone()
            };
            format!("{c:?}")
        };
        assert_eq!(same(&back), same(&cli.connect));
        assert_eq!(back.pool.workers, Workers::Count(3));
        assert_eq!(back.lanes, Lanes::Off);

        // Defaults are not written: a later version's defaults apply.
        let matches = Cli::command()
            .try_get_matches_from(["x", "--code", "C"])
            .unwrap();
        let args = ConnectArgs::service_args(&matches, Path::new("/s"));
        assert_eq!(args, ["--state-dir", "/s"].map(OsString::from));
    }

    #[test]
    fn option_values_that_cannot_work_are_refused() {
        for bad in [
            &["x", "embed", "--job-timeout", "0", "f.wav"][..],
            &["x", "embed", "--max-jobs-per-child", "0", "f.wav"],
            &["x", "embed", "--max-child-memory", "64", "f.wav"],
            &["x", "embed", "--workers", "0", "f.wav"],
            &["x", "embed", "--child-nice", "20", "f.wav"],
            &["x", "embed", "--child-nice", "-1", "f.wav"],
        ] {
            let e = Cli::try_parse_from(bad).expect_err("accepted");
            assert!(!e.to_string().is_empty());
        }
        let e = Cli::try_parse_from(["x", "embed", "--max-child-memory", "64", "f.wav"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 256"), "{e}");
    }
}
