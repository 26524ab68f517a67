//! Periodic jobs that must run on one controller replica at a time: retention, the
//! notification deliverer, the retained-policy watch and the rollout watch.
//!
//! [`one_at_a_time`] runs a job while this process holds the job's lease
//! ([`crate::store::arbiter::try_lead`]: a PostgreSQL advisory lock on a session of its own,
//! or an `flock` on a file beside the SQLite database) and otherwise asks again every
//! [`RETRY`]. A replica that dies releases its leases with its process (the kernel drops the
//! `flock`, the server the session's locks), so the job moves to a surviving replica
//! within one retry. With one controller the lease is always free and the job starts at
//! once.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::store::arbiter::{self, Lease};
use crate::store::db::{Db, DbError};

/// How often a replica without the lease asks for it again.
pub const RETRY: Duration = Duration::from_secs(2);

/// Runs `job` while this process leads `name` on the database at `url` (a SQLite path or a
/// `postgres://` URL); waits for the lease until then. Returns the job's output, or `None`
/// when `stop` turned true first (a job that is still running then is dropped: jobs stop
/// between two of their steps anyway).
///
/// A PostgreSQL lease can be lost while the job runs (the server restarted, the lease's
/// connection was cut or ended by an administrator): the lease is checked every [`RETRY`],
/// and when it is gone the job is dropped, so that it never runs on two replicas at once,
/// and this replica asks for the lease again like the others; `job` is called again for
/// the next term.
pub async fn one_at_a_time<F, Fut, T>(
    url: String,
    name: &'static str,
    mut stop: watch::Receiver<bool>,
    mut job: F,
) -> Option<T>
where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = T>,
{
    // Opened in the loop: a database that cannot be opened now (locked by a replica that
    // is creating it, a PostgreSQL server not up yet) is asked again, not given up on.
    let mut db: Option<Arc<Db>> = None;
    loop {
        let lease = Arc::new(Mutex::new(lead(&url, name, &mut stop, &mut db).await?));
        tracing::info!(job = name, "this replica leads the job");
        let out = tokio::select! {
            out = job(stop.clone()) => Some(Some(out)),
            () = stopped(stop.clone()) => Some(None),
            () = lost(lease.clone()) => None,
        };
        // Releasing a PostgreSQL lease is a round trip: not on the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || drop(lease)).await;
        match out {
            Some(out) => return out,
            None => tracing::warn!(
                job = name,
                "the job's lease was lost (its database connection ended); the job stopped \
                 here and this replica asks for the lease again"
            ),
        }
    }
}

/// Waits until this process holds the lease of `name` (`None`: `stop` turned true first).
async fn lead(
    url: &str,
    name: &'static str,
    stop: &mut watch::Receiver<bool>,
    db: &mut Option<Arc<Db>>,
) -> Option<Lease> {
    loop {
        if *stop.borrow() {
            return None;
        }
        let (held, url) = (db.clone(), url.to_string());
        let asked = tokio::task::spawn_blocking(move || {
            let db = match held {
                Some(db) => db,
                None => Arc::new(Db::open(&url)?),
            };
            let lease = arbiter::try_lead(&db, name)?;
            Ok::<_, DbError>((db, lease))
        })
        .await;
        match asked {
            Ok(Ok((opened, lease))) => {
                *db = Some(opened);
                match lease {
                    Some(lease) => return Some(lease),
                    None => tracing::debug!(job = name, "another replica leads"),
                }
            }
            Ok(Err(e)) => tracing::warn!(job = name, error = %e, "asking for the lease"),
            Err(e) => tracing::warn!(job = name, error = %e, "lease task failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Returns when `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Returns when `lease` is no longer held, checking every [`RETRY`].
async fn lost(lease: Arc<Mutex<Lease>>) {
    loop {
        tokio::time::sleep(RETRY).await;
        let lease = lease.clone();
        let held = tokio::task::spawn_blocking(move || match lease.lock() {
            Ok(mut lease) => lease.is_held(),
            Err(_) => false,
        })
        .await
        .unwrap_or(false);
        if !held {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Running(Arc<AtomicUsize>);

    /// Waits (every 20 ms, at most `tries` times) until the job has started `n` times.
    async fn started(ran: &AtomicUsize, n: usize, tries: u32) {
        for _ in 0..tries {
            if ran.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the job did not start {n} times");
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Two replicas of one job on one SQLite database: one runs it, the other waits; when
    /// the first stops, the second takes over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_runs_on_one_replica_and_moves_when_it_stops() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("c.db").to_string_lossy().into_owned();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let ran = Arc::new(AtomicUsize::new(0));
        let leader = Arc::new(AtomicUsize::new(0));
        let replica = |id: usize, stop: watch::Receiver<bool>| {
            let (running, most, ran, leader) =
                (running.clone(), most.clone(), ran.clone(), leader.clone());
            tokio::spawn(one_at_a_time(
                url.clone(),
                "test-job",
                stop,
                move |mut stop| {
                    let (running, most, ran, leader) =
                        (running.clone(), most.clone(), ran.clone(), leader.clone());
                    async move {
                        leader.store(id, Ordering::SeqCst);
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        // Counted down however the job ends (it is dropped at `stop`).
                        let _running = Running(running);
                        most.fetch_max(now, Ordering::SeqCst);
                        ran.fetch_add(1, Ordering::SeqCst);
                        while !*stop.borrow() {
                            if stop.changed().await.is_err() {
                                break;
                            }
                        }
                    }
                },
            ))
        };
        let (stop_a, a_stopped) = watch::channel(false);
        let (stop_b, b_stopped) = watch::channel(false);
        let a = replica(1, a_stopped);
        let b = replica(2, b_stopped);
        let wait_for = |n: usize| started(&ran, n, 500);
        wait_for(1).await;
        // Two retries later, still one replica runs it.
        tokio::time::sleep(RETRY * 2).await;
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        // The leader stops (as a killed replica would release the lease).
        let (first, second, stop_first, stop_second) = match leader.load(Ordering::SeqCst) {
            1 => (a, b, stop_a, stop_b),
            _ => (b, a, stop_b, stop_a),
        };
        stop_first.send(true).unwrap();
        assert!(first.await.is_ok());
        wait_for(2).await;
        assert_eq!(
            most.load(Ordering::SeqCst),
            1,
            "two replicas ran the job at once"
        );
        stop_second.send(true).unwrap();
        assert!(second.await.is_ok());
    }

    /// A PostgreSQL lease cut from under its leader (the server ends its session): the job
    /// stops there and starts again once the lease is held again, never twice at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_whose_postgres_lease_is_lost_stops_and_leads_again() {
        let url = smtpguard_pgtest::database();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let ran = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = watch::channel(false);
        let job = {
            let (running, most, ran) = (running.clone(), most.clone(), ran.clone());
            tokio::spawn(one_at_a_time(
                url.clone(),
                "cut-job",
                stopped,
                move |mut stop| {
                    let (running, most, ran) = (running.clone(), most.clone(), ran.clone());
                    async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        let _running = Running(running);
                        most.fetch_max(now, Ordering::SeqCst);
                        ran.fetch_add(1, Ordering::SeqCst);
                        while !*stop.borrow() {
                            if stop.changed().await.is_err() {
                                break;
                            }
                        }
                    }
                },
            ))
        };
        let wait_for = |n: usize| started(&ran, n, 1000);
        wait_for(1).await;
        // The server ends the lease's session, as a restart or an administrator would.
        let admin = url.clone();
        let cut = tokio::task::spawn_blocking(move || {
            arbiter::end_lease_sessions(&Db::open(&admin).unwrap()).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(cut, 1, "one session held the lease");
        wait_for(2).await;
        assert_eq!(most.load(Ordering::SeqCst), 1, "the job ran twice at once");
        stop.send(true).unwrap();
        assert!(job.await.is_ok());
        assert_eq!(running.load(Ordering::SeqCst), 0);
    }

    /// A leader's task aborted (the web server stopping drops its rollout watch) releases
    /// its PostgreSQL lease from the runtime thread without panicking, and another replica
    /// leads next.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_aborted_postgres_leader_releases_its_lease() {
        let url = smtpguard_pgtest::database();
        let ran = Arc::new(AtomicUsize::new(0));
        let (_stop, stopped) = watch::channel(false);
        let replica = |stopped: watch::Receiver<bool>| {
            let ran = ran.clone();
            tokio::spawn(one_at_a_time(
                url.clone(),
                "abort-job",
                stopped,
                move |_| {
                    let ran = ran.clone();
                    async move {
                        ran.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<()>().await;
                    }
                },
            ))
        };
        let first = replica(stopped.clone());
        let until = |n: usize| started(&ran, n, 1000);
        until(1).await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        let second = replica(stopped);
        until(2).await;
        second.abort();
    }
}
