//! Ctrl-C and SIGTERM (Windows: Ctrl-C, Ctrl-Break, the console closing, logoff and
//! system shutdown) as one stream of "please stop" events.
//!
//! Platform code by nature (each platform has its own stop requests), so its `cfg`s
//! stay here rather than in `os`.

/// Made before the supervisor takes its state-dir lock, so that a stop request during
/// start-up is kept and honoured (a clean exit), not the signal's default (killed).
pub struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(windows)]
    c: tokio::signal::windows::CtrlC,
    #[cfg(windows)]
    brk: tokio::signal::windows::CtrlBreak,
    #[cfg(windows)]
    close: tokio::signal::windows::CtrlClose,
    #[cfg(windows)]
    shutdown: tokio::signal::windows::CtrlShutdown,
}

impl Signals {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            int: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?,
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
            #[cfg(windows)]
            c: tokio::signal::windows::ctrl_c()?,
            #[cfg(windows)]
            brk: tokio::signal::windows::ctrl_break()?,
            #[cfg(windows)]
            close: tokio::signal::windows::ctrl_close()?,
            #[cfg(windows)]
            shutdown: tokio::signal::windows::ctrl_shutdown()?,
        })
    }

    /// Waits for the next stop request.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(windows)]
        tokio::select! {
            _ = self.c.recv() => {}
            _ = self.brk.recv() => {}
            _ = self.close.recv() => {}
            _ = self.shutdown.recv() => {}
        }
        #[cfg(not(any(unix, windows)))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The second stop request: exits now. Helpers are killed and the runtime directory goes
/// first, then the log is flushed.
pub fn exit_now(code: i32) -> ! {
    crate::os::helper::kill_all();
    crate::os::remove_runtime_dir();
    crate::logging::flush();
    std::process::exit(code)
}
