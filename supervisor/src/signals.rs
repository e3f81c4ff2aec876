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

/// SIGHUP: "read the preferences again" (`prefs::monitor`). Never on Windows, which
/// has no such signal (a change of the file is seen there too).
pub struct Hangups {
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Starts listening for SIGHUP (on Unix; nothing to listen for elsewhere).
    pub fn install() -> Self {
        Self {
            #[cfg(unix)]
            hup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }

    /// Waits for the next SIGHUP.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(h) = self.hup.as_mut() {
            if h.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
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
