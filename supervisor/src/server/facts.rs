//! The facts connect mode publishes: written by the hub alone ([`Published`], handed
//! to `Hub::start`), read by everyone else ([`Watch`]).

use std::sync::Arc;

use tokio::sync::watch;

use super::intake::Intake;

/// What the hub publishes: the writing side of [`Watch`], held by the hub alone.
pub struct Published {
    pub(super) intake: Arc<watch::Sender<Intake>>,
    pub(super) out: Out,
}

pub(super) struct Out {
    pub(super) connected: watch::Sender<bool>,
    pub(super) announced: watch::Sender<Option<bool>>,
    pub(super) welcome: watch::Sender<Option<usize>>,
    pub(super) draining: watch::Sender<bool>,
}

/// The facts the hub publishes, for everyone else to read (cheap to clone).
#[derive(Clone)]
pub struct Watch {
    /// Whether the worker takes jobs.
    pub intake: watch::Receiver<Intake>,
    /// Whether any lane is connected now (the status line, `/metrics`).
    pub connected: watch::Receiver<bool>,
    /// What lane 0's first handshake answer said: `Some(true)` if the server announced
    /// protocol 2 in it, `Some(false)` if not (today's server); `None` before it.
    pub announced: watch::Receiver<Option<bool>>,
    /// `Some(slots)` once the server said `welcome` (protocol 2): it never deletes a
    /// session for a closed connection, and takes hand-backs as `release`.
    pub welcome: watch::Receiver<Option<usize>>,
    /// Set once, by the first stop request: the one flag `server::stopping` reads.
    pub draining: watch::Receiver<bool>,
}

impl Published {
    /// The hub's facts before it starts: intake as the preferences decided at start.
    pub fn new(intake: Intake) -> (Published, Watch) {
        let (intake, intake_rx) = watch::channel(intake);
        let (connected, connected_rx) = watch::channel(false);
        let (announced, announced_rx) = watch::channel(None);
        let (welcome, welcome_rx) = watch::channel(None);
        let (draining, draining_rx) = watch::channel(false);
        let published = Published {
            intake: Arc::new(intake),
            out: Out {
                connected,
                announced,
                welcome,
                draining,
            },
        };
        let watch = Watch {
            intake: intake_rx,
            connected: connected_rx,
            announced: announced_rx,
            welcome: welcome_rx,
            draining: draining_rx,
        };
        (published, watch)
    }
}
