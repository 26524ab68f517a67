//! `smtpguard-controller serve`: the embedded broker (unless an external one is
//! configured), the retained policies republished and then watched
//! ([`policy::watch_retained`]), the enrolled CPEs' keys and broker passwords kept fresh,
//! retention ([`crate::store::retention`], at start and every `retention.interval_minutes`)
//! and the ingest, until `shutdown`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::Config;
use crate::ingest::service::{self, Admission, IngestError};
use crate::registry::KeyCache;
use crate::store::Store;
use crate::{broker, lead, policy};

/// Runs the controller until `shutdown` resolves. Refuses to start with a configuration
/// that does not validate, e.g. an empty or well-known broker password (the embedded
/// broker's is made first when none is set, see [`Config::resolve_broker_password`]).
///
/// # Errors
/// [`IngestError`] when the configuration is unusable or the database, the broker or the
/// ingest cannot start.
pub async fn run(
    mut config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), IngestError> {
    config
        .resolve_broker_password()
        .map_err(broker::BrokerError::from)?;
    config.validate().map_err(broker::BrokerError::from)?;
    let database = config.database_url();
    tracing::info!(database = %config.database_label(), "opening the database");
    let store = Store::open_url(&database)?;
    // Empty: the embedded broker admits no router until the ingest has subscribed and
    // fills it (`ingest::service::Admission`), so nothing a router publishes is dropped
    // for want of a subscriber.
    let keys = Arc::new(RwLock::new(KeyCache::closed()));
    let admission = Arc::new(Admission::new(keys.clone(), KeyCache::load(&store)?));
    let latest = policy::latest_all(&store)?;
    let (keys_changed_tx, keys_changed) = tokio::sync::watch::channel(0u64);
    spawn_key_refresher(store, admission.clone(), keys_changed_tx);
    if config.broker.is_embedded() {
        broker::start_embedded(&config.broker, keys.clone(), keys_changed)?;
        tracing::info!(listen = %config.broker.embedded_listen, "embedded broker started");
    }
    // Periodic jobs run on one replica at a time ([`crate::lead`]); they stop with the web UI.
    let (stop_web, web_stopped) = tokio::sync::watch::channel(false);
    let lease_url = database.clone();
    {
        let (broker_config, client_id, url) = (
            config.broker.clone(),
            format!("{}-policy-watch", config.broker.client_id),
            database.clone(),
        );
        tokio::spawn(lead::one_at_a_time(
            lease_url.clone(),
            "policy-watch",
            web_stopped.clone(),
            move |_| policy::watch_retained(broker_config.clone(), client_id.clone(), url.clone()),
        ));
    }
    // Put the newest policies back on their retained topics (the embedded broker forgets
    // them when it stops). Retried in the background until the broker takes them.
    let broker_config = config.broker.clone();
    let client_id = format!("{}-policy", config.broker.client_id);
    tokio::spawn(async move {
        for attempt in 0u32..30 {
            match policy::publish(&broker_config, &client_id, &latest, Duration::from_secs(5)).await
            {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "republishing policy");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        tracing::warn!("could not republish the retained policies");
    });
    // The web UI stops with the ingest.
    let web = if config.web.enabled {
        let web_config = config.clone();
        let mut rx = web_stopped.clone();
        Some(tokio::spawn(async move {
            let stop = async move {
                let _ = rx.changed().await;
            };
            if let Err(e) = crate::web::live::run(&web_config, stop).await {
                tracing::error!(error = %e, "web server stopped");
            }
        }))
    } else {
        None
    };
    // Notifications stop with the web UI.
    let notify = {
        let (notify_config, url) = (config.notifications.clone(), database.clone());
        tokio::spawn(lead::one_at_a_time(
            lease_url.clone(),
            "notifications",
            web_stopped.clone(),
            move |stop| crate::notify::run(notify_config.clone(), url.clone(), stop),
        ))
    };
    // So does retention, between two batches.
    let retention = {
        let (url, windows) = (database.clone(), config.retention.windows(&config.ingest));
        let every = Duration::from_secs(u64::from(config.retention.interval_minutes) * 60);
        tokio::spawn(lead::one_at_a_time(
            lease_url.clone(),
            "retention",
            web_stopped.clone(),
            move |stop| run_retention(url.clone(), windows, every, stop),
        ))
    };
    let result = service::run(&config, admission, async move {
        shutdown.await;
        let _ = stop_web.send(true);
    })
    .await;
    if let Some(web) = web {
        let _ = web.await;
    }
    if let Err(e) = retention.await {
        tracing::error!(error = %e, "retention task failed");
    }
    match notify.await {
        Ok(Some(Err(e))) => tracing::error!(error = %e, "notifications stopped"),
        Err(e) => tracing::error!(error = %e, "notifications task failed"),
        Ok(Some(Ok(())) | None) => {}
    }
    result
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down");
}

/// Runs a retention pass on the database at `url` now and then every `every` until `stop`
/// turns true (checked
/// between batches too, so shutdown does not wait for a long pass). A failed pass is
/// logged and tried again at the next tick.
async fn run_retention(
    url: String,
    windows: crate::store::retention::Windows,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let clock = crate::web::system_clock();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let (url, now, stopping) = (url.clone(), clock(), stop.clone());
        let pass = tokio::task::spawn_blocking(move || {
            let mut store = Store::open_url(&url)?;
            store.apply_retention(
                &windows,
                now,
                &crate::store::retention::Limits::default(),
                // Stopping, or the controller is gone without saying so (an ingest that
                // failed to start drops the sender).
                &|| *stopping.borrow() || stopping.has_changed().is_err(),
            )
        })
        .await;
        match pass {
            Ok(Ok(report)) if report.total() > 0 || !report.complete => {
                tracing::info!(
                    deleted = report.total(),
                    batches = report.batches,
                    complete = report.complete,
                    "retention pass"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "retention pass failed"),
            Err(e) => tracing::error!(error = %e, "retention pass panicked"),
        }
    }
}

/// How often the registry is checked for enrollments, revocations and new passwords made
/// by other processes (the `cpe` commands, the web UI).
const KEY_REFRESH: Duration = Duration::from_secs(1);

/// Reloads the [`KeyCache`] on its own thread whenever [`Store::keys_marker`] says the
/// registry may have changed (checked every [`KEY_REFRESH`]) and hands it to `admission` (the
/// broker sees it once the ingest has subscribed), and ticks `changed` when the enrolled
/// CPEs or their passwords differ, so the embedded broker closes the connections of
/// revoked or re-keyed CPEs.
fn spawn_key_refresher(
    store: Store,
    admission: Arc<Admission>,
    changed: tokio::sync::watch::Sender<u64>,
) {
    let spawned = std::thread::Builder::new()
        .name("key-refresher".into())
        .spawn(move || {
            let version = |s: &Store| s.keys_marker().ok();
            let mut seen = version(&store);
            let mut current = KeyCache::load(&store).unwrap_or_default();
            let mut generation = 0u64;
            loop {
                std::thread::sleep(KEY_REFRESH);
                if changed.is_closed() {
                    return;
                }
                let now = version(&store);
                if now.is_some() && now == seen {
                    continue;
                }
                seen = now;
                match KeyCache::load(&store) {
                    Ok(fresh) if fresh != current => {
                        admission.update(fresh.clone());
                        current = fresh;
                        generation += 1;
                        let _ = changed.send(generation);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "reloading enrolled CPEs failed"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the key refresher");
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::{IngestConfig, RetentionConfig};
    use crate::store::{retention, Received};

    fn telemetry(seq: u64, at_ms: u64) -> Received {
        crate::store::received("cpe-s", seq, at_ms, crate::store::empty_telemetry(at_ms))
    }

    #[tokio::test]
    async fn retention_runs_at_start_and_stops_with_the_controller() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.db");
        let store_path = path.clone();
        let now = (crate::web::system_clock())();
        let day = 86_400_000;
        let store = Store::open(&path).unwrap();
        store
            .write_batch(&[telemetry(1, now - 30 * day), telemetry(2, now)], &[])
            .unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // An hour between passes: only the one at start can run within this test.
        let task = tokio::spawn(run_retention(
            format!("sqlite:{}", path.display()),
            RetentionConfig::default().windows(&IngestConfig::default()),
            Duration::from_secs(3600),
            stopped,
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let totals = loop {
            let t = retention::totals(store.db()).unwrap();
            if t.last_run.is_some() {
                break t;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no retention pass at start"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(totals.deleted.contains(&(retention::Table::Telemetry, 1)));
        let left = crate::store::history::telemetry_seqs(
            &**Store::open(&store_path).unwrap().db(),
            "cpe-s",
        );
        assert_eq!(left, [2]);
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("retention stops with the controller")
            .unwrap();
    }

    /// The blocking PostgreSQL client must not run on the runtime's threads: the test
    /// drives the runtime itself and reads the database from its own thread.
    #[test]
    fn retention_runs_on_a_postgres_url() {
        let url = smtpguard_pgtest::database();
        let store = Store::open_url(&url).unwrap();
        let now = (crate::web::system_clock())();
        let day = 86_400_000;
        store
            .write_batch(&[telemetry(1, now - 30 * day), telemetry(2, now)], &[])
            .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = rt.spawn(run_retention(
            url.clone(),
            RetentionConfig::default().windows(&IngestConfig::default()),
            Duration::from_secs(3600),
            stopped,
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let totals = loop {
            let t = retention::totals(store.db()).unwrap();
            if t.last_run.is_some() {
                break t;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no retention pass at start"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(totals.deleted.contains(&(retention::Table::Telemetry, 1)));
        let left = crate::store::history::telemetry_seqs(&**store.db(), "cpe-s");
        assert_eq!(left, [2]);
        stop.send(true).unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("retention stops with the controller")
                .unwrap();
        });
    }
}
