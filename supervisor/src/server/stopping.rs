//! "Did we ask for this stop?", decided here and nowhere else.
//!
//! A stop (Ctrl-C, SIGTERM, the console closing) is the supervisor's: it cancels the
//! downloads in flight and hands their jobs back; it never reports them failed. A helper
//! that ends because of a stop is the stop's, whoever sent the signal: our own cancel,
//! or a signal that reached it directly at the moment the supervisor got its own (an old
//! systemd unit with `KillMode=control-group` signals every process of the service). A
//! helper that ends on its own is the track's or the machine's, as `server::youtube`
//! classifies it.

use std::time::Duration;

use tokio::sync::watch;

use super::download::DownloadError;

/// How long an interrupted helper waits for the supervisor's own stop request before
/// its end counts as the helper's own: a group or cgroup signal reaches both at once,
/// and the helper's exit may be seen first.
pub const GRACE: Duration = Duration::from_secs(2);

/// Whether a download that ended with `error` ended because we are stopping.
/// `stopping` is the one flag a stop request sets.
pub async fn ours(stopping: &mut watch::Receiver<bool>, error: &DownloadError) -> bool {
    if *stopping.borrow() {
        return true;
    }
    if !error.interrupted() {
        return false;
    }
    matches!(
        tokio::time::timeout(GRACE, stopping.wait_for(|s| *s)).await,
        Ok(Ok(_))
    )
}

/// Resolves when a stop is requested (never, if the flag's sender is gone).
pub async fn requested(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn our_stop_versus_a_helper_that_ended_on_its_own() {
        let sigterm = DownloadError::Killed(15);
        let ctrl_c = DownloadError::YtDlp("ERROR: Interrupted by user".into());
        let private = DownloadError::YtDlp("ERROR: [youtube] x: Private video".into());

        // Already stopping: whatever the helper said, it is ours.
        let (tx, mut rx) = watch::channel(true);
        assert!(ours(&mut rx, &private).await);
        assert!(ours(&mut rx, &sigterm).await);

        // Not stopping, killed by a signal nobody followed with a stop: the helper's own
        // end (the OOM killer, a user's kill), classified as usual.
        tx.send_replace(false);
        let start = tokio::time::Instant::now();
        assert!(!ours(&mut rx, &sigterm).await);
        assert_eq!(start.elapsed(), GRACE, "waited the grace for a stop");
        // A track's error while running: no wait, not ours.
        let start = tokio::time::Instant::now();
        assert!(!ours(&mut rx, &private).await);
        assert_eq!(start.elapsed(), Duration::ZERO);

        // Interrupted, and our stop request comes a moment later (one signal to the
        // whole service): ours.
        let later = tokio::spawn({
            let tx = tx.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                tx.send_replace(true);
            }
        });
        assert!(ours(&mut rx, &ctrl_c).await);
        later.await.unwrap();

        // The stop came after the grace: the helper's own end.
        tx.send_replace(false);
        let late = tokio::spawn({
            let tx = tx.clone();
            async move {
                tokio::time::sleep(GRACE + Duration::from_secs(1)).await;
                tx.send_replace(true);
            }
        });
        assert!(!ours(&mut rx, &ctrl_c).await);
        late.await.unwrap();
    }
}
