//! The child's serve loop: connect to the supervisor's local socket, read how to start
//! (`ToChild::Start`, the first frame), load the model, say hello, then embed one job at
//! a time until told to stop or the socket closes.
//! A second thread sends a heartbeat every second, so a frozen process is noticed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaarfm_shared::ipc::{self, FromChild, JobError, JobOutput, Start, ToChild};
use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{Name, Stream};

use crate::infer::{InferOptions, Musicnn};
use crate::{fault, isolation, pipeline};

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

/// Runs the child started on `socket` until shutdown; returns the process exit status.
pub fn run(socket: &str) -> i32 {
    let stream = match socket_name(socket).and_then(|n| Stream::connect(n)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, socket = %socket, "child cannot reach the supervisor");
            return exit::NO_SUPERVISOR;
        }
    };
    let writer: Writer = Arc::new(Conn {
        stream,
        write: Mutex::new(()),
    });
    let mut frames = ipc::FrameReader::default();
    let start = match frames.read::<ToChild>(&mut &writer.stream) {
        Ok(Some(ToChild::Start(s))) => s,
        Ok(Some(other)) => {
            tracing::error!(frame = ?other, "the supervisor's first frame is not Start");
            return exit::NO_SUPERVISOR;
        }
        Ok(None) => return exit::NO_SUPERVISOR,
        Err(e) => {
            tracing::error!(error = %e, "bad first frame from the supervisor");
            return exit::NO_SUPERVISOR;
        }
    };
    let Start {
        spec,
        model,
        parent_pid,
    } = start;
    // Before any thread of ours starts: new threads inherit the niceness.
    if let Err(e) = isolation::lower_priority(spec.nice) {
        tracing::warn!(error = %e, nice = spec.nice, "cannot lower the child's priority");
    }
    if let Err(e) = isolation::harden(parent_pid) {
        tracing::error!(error = %e, "child cannot start");
        return exit::NO_SUPERVISOR;
    }

    let opts = InferOptions {
        threads: spec.threads,
        batch: spec.batch,
        device: spec.device,
        engine: spec.engine,
    };
    let mut model = match Musicnn::load(&model.to_path_buf(), &opts) {
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
            ToChild::Start(_) => {
                tracing::error!("a second Start frame from the supervisor");
                return exit::NO_SUPERVISOR;
            }
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
