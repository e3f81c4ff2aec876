//! How a command ended, for the exit status (errors are 2). A leaf: every command
//! returns one, `main` turns it into the process's exit code. (`shared::server::Outcome`
//! is a job's result; this is a run's.)

/// A command's end.
pub enum Exit {
    /// Everything done: 0.
    Ok,
    /// Some files failed (`embed`): 1.
    SomeFailed,
    /// Results that could be neither delivered nor saved: 3.
    Lost(usize),
    /// `status`: no worker is running (said already): 3.
    NotRunning,
}
