//! Graceful shutdown of the proxy's connections ([`Drain`]).
use std::{future::Future, time::Duration};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Graceful shutdown, after ztunnel's drain: stop accepting, let every
/// connection finish what it is doing (HTTP/1 completes the exchange in
/// flight and closes, HTTP/2 sends GOAWAY and completes its open streams),
/// and after a bound close what is left. Transactions cut that way are
/// recorded with `error.type = agent_shutdown`.
#[derive(Debug, Default)]
pub struct Drain {
    /// Fired when draining starts.
    pub started: CancellationToken,
    /// Fired when the bound is reached: remaining connections are closed.
    pub forced: CancellationToken,
    /// Every accepted connection's task.
    tasks: TaskTracker,
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Connections open when draining started.
    pub in_flight: usize,
    /// Of those, still open at the bound and closed.
    pub forced: usize,
}

impl Drain {
    /// Runs an accepted connection's task, counted until it ends.
    pub(crate) fn spawn<F>(&self, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(connection);
    }

    /// Stops accepting and waits up to `grace` for connections to finish;
    /// closes the rest.
    pub async fn run(&self, grace: Duration) -> DrainOutcome {
        self.started.cancel();
        self.tasks.close();
        let in_flight = self.tasks.len();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_ok() {
            return DrainOutcome {
                in_flight,
                forced: 0,
            };
        }
        let forced = self.tasks.len();
        self.forced.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
        DrainOutcome { in_flight, forced }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn drain_waits_for_connections_then_closes_what_is_left() {
        let drain = Arc::new(Drain::default());
        // Finishes soon after draining starts (an exchange completing).
        let d = drain.clone();
        drain.tasks.spawn(async move {
            d.started.cancelled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        // Never finishes on its own (a long stream).
        let d = drain.clone();
        drain.tasks.spawn(async move {
            tokio::select! {
                () = std::future::pending::<()>() => {}
                () = d.forced.cancelled() => {}
            }
        });
        let t0 = std::time::Instant::now();
        let out = drain.run(Duration::from_millis(300)).await;
        assert_eq!(
            out,
            DrainOutcome {
                in_flight: 2,
                forced: 1
            }
        );
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert!(drain.tasks.is_empty());
        // Nothing in flight: returns at once.
        let idle = Drain::default();
        let out = idle.run(Duration::from_secs(30)).await;
        assert_eq!(
            out,
            DrainOutcome {
                in_flight: 0,
                forced: 0
            }
        );
    }
}
