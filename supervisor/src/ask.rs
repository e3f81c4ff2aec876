//! `chaarfm-super status`: asks the running worker for its report (`server::control`)
//! and prints it for a person, or as one JSON object with `--json`.

use std::path::PathBuf;

use crate::cli::StatusArgs;
use crate::exit::Exit;
use crate::server::control::{self, AskError};

/// Where to look: the state dir given, else the user's, then a system service's.
fn candidates(args: &StatusArgs) -> Vec<PathBuf> {
    match &args.state_dir {
        Some(d) => vec![d.clone()],
        None => {
            let mut v = vec![crate::os::default_state_dir()];
            if cfg!(target_os = "linux") {
                v.push(PathBuf::from("/var/lib/chaarfm-super"));
            }
            v
        }
    }
}

pub async fn run(args: &StatusArgs) -> anyhow::Result<Exit> {
    let mut first_error = None;
    for dir in candidates(args) {
        match control::ask(&dir).await {
            Ok(r) => {
                let out = if args.json {
                    format!("{}\n", serde_json::to_string_pretty(&r)?)
                } else {
                    crate::server::report::text(&r, crate::date::unix_now())
                };
                crate::logging::print(&out);
                return Ok(Exit::Ok);
            }
            Err(e @ (AskError::Denied(..) | AskError::Bad(_))) => anyhow::bail!("{e}"),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        crate::logging::eprint(&format!("chaarfm-super: {e}\n"));
    }
    Ok(Exit::NotRunning)
}
