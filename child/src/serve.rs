//! The child's serve loop: connect to the supervisor's local socket, load the model, say
//! hello, then embed one job at a time until told to stop or the socket closes.
//! A second thread sends a heartbeat every second, so a frozen process is noticed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaarfm_shared::ipc::{self, FromChild, JobError, JobOutput, ToChild};
use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{Name, Stream};

use crate::infer::{Device, InferOptions, Musicnn};
use crate::{fault, isolation, pipeline};

/// How the supervisor started this child.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    pub socket: String,
    pub parent_pid: u32,
    pub model: PathBuf,
    pub device: Device,
    pub threads: usize,
    pub batch: usize,
    pub engine: crate::Engine,
    /// Niceness to run at (`isolation::lower_priority`); 0 leaves it.
    pub nice: i32,
}

/// The local-socket name for `s`: a file path on Unix, a named pipe on Windows.
pub fn socket_name(s: &str) -> std::io::Result<Name<'_>> {
    // Platform code here by nature: a socket is a path on Unix, a pipe name on Windows.
    #[cfg(unix)]
    {
        use interprocess::local_socket::GenericFilePath;
        s.to_fs_name::<GenericFilePath>()
    }
    #[cfg(not(unix))]
    {
        use interprocess::local_socket::GenericNamespaced;
        s.to_ns_name::<GenericNamespaced>()
    }
}

/// Exit statuses of a child that did not serve.
pub mod exit {
    /// The supervisor is gone or the socket failed.
    pub const NO_SUPERVISOR: i32 = 3;
    /// The model or runtime cannot be loaded (reported with `Fatal`).
    pub const FATAL: i32 = 4;
}

/// The connection, shared by the job loop (reads, results) and the heartbeat thread;
/// the lock keeps their frames from interleaving.
struct Conn {
    stream: Stream,
    write: Mutex<()>,
}

type Writer = Arc<Conn>;

fn send(w: &Writer, msg: &FromChild) -> Result<(), ipc::FrameError> {
    // A poisoned lock only means the other thread panicked; the stream is still usable.
    let _guard = w.write.lock().unwrap_or_else(|p| p.into_inner());
    ipc::write_frame(&mut &w.stream, msg)
}

/// Runs the child until shutdown; returns the process exit status.
pub fn run(args: ServeArgs) -> i32 {
    // First, before any thread starts: new threads inherit the niceness.
    if let Err(e) = isolation::lower_priority(args.nice) {
        tracing::warn!(error = %e, nice = args.nice, "cannot lower the child's priority");
    }
    if let Err(e) = isolation::harden(args.parent_pid) {
        tracing::error!(error = %e, "child cannot start");
        return exit::NO_SUPERVISOR;
    }
    let stream = match socket_name(&args.socket).and_then(|n| Stream::connect(n)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, socket = %args.socket, "child cannot reach the supervisor");
            return exit::NO_SUPERVISOR;
        }
    };
    let writer: Writer = Arc::new(Conn {
        stream,
        write: Mutex::new(()),
    });

    let opts = InferOptions {
        threads: args.threads,
        batch: args.batch,
        device: args.device,
        engine: args.engine,
    };
    let mut model = match Musicnn::load(&args.model, &opts) {
        Ok(m) => m,
        Err(e) => {
            let _ = send(
                &writer,
                &FromChild::Fatal {
                    message: e.to_string(),
                },
            );
            return exit::FATAL;
        }
    };
    let hello = FromChild::Hello {
        protocol: ipc::PROTOCOL_VERSION,
        pid: std::process::id(),
        device: model.device().to_string(),
        model_sha256: model.model_sha256().to_string(),
    };
    if send(&writer, &hello).is_err() {
        return exit::NO_SUPERVISOR;
    }

    let hb = Arc::clone(&writer);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        if send(&hb, &FromChild::Heartbeat).is_err() {
            // The supervisor is gone; nothing left to serve.
            std::process::exit(exit::NO_SUPERVISOR);
        }
    });

    let mut frames = ipc::FrameReader::default();
    loop {
        let msg = match frames.read::<ToChild>(&mut &writer.stream) {
            Ok(Some(m)) => m,
            Ok(None) => return 0,
            Err(e) => {
                tracing::error!(error = %e, "bad frame from the supervisor");
                return exit::NO_SUPERVISOR;
            }
        };
        let job = match msg {
            ToChild::Job(job) => job,
            ToChild::Shutdown => return 0,
        };
        let received = Instant::now();
        let shown = job.path.to_string();
        if fault::fatal_for(&shown) {
            let _ = send(
                &writer,
                &FromChild::Fatal {
                    message: "injected fatal fault: the runtime broke".into(),
                },
            );
            return exit::FATAL;
        }
        fault::inject(&shown);
        let reply = match embed(&mut model, &job, &writer) {
            Ok(mut output) => {
                output.wall_ms = received.elapsed().as_secs_f64() * 1e3;
                FromChild::Done { id: job.id, output }
            }
            Err(message) => FromChild::Failed {
                id: job.id,
                error: JobError { message },
            },
        };
        if send(&writer, &reply).is_err() {
            return exit::NO_SUPERVISOR;
        }
    }
}

fn embed(model: &mut Musicnn, job: &ipc::Job, writer: &Writer) -> Result<JobOutput, String> {
    let e = pipeline::embed_file_observed(&job.path.to_path_buf(), model, |audio_s| {
        let _ = send(
            writer,
            &FromChild::Progress {
                id: job.id,
                audio_s,
            },
        );
    })
    .map_err(|e| e.to_string())?;
    Ok(JobOutput {
        vector: e.vector,
        tags: if job.tags { e.tags } else { Vec::new() },
        patches: e.patches as u32,
        duration_s: e.duration_s,
        timings: e.timings,
        peak_rss_kib: isolation::peak_rss_kib(),
        wall_ms: 0.0,
        artist: e.file_tags.artist,
        title: e.file_tags.title,
    })
}
