//! `smtpguard-controller serve`: the embedded broker (unless an external one is
//! configured), the retained policies republished, and the ingest, until `shutdown`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::Config;
use crate::ingest::service::{self, IngestError};
use crate::registry::KeyCache;
use crate::store::Store;
use crate::{broker, policy};

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
    let store = Store::open(&config.db_path)?;
    // Empty: the embedded broker admits no router until the ingest has subscribed and
    // fills it (`ingest::service::Admission`), so nothing a router publishes is dropped
    // for want of a subscriber.
    let keys = Arc::new(RwLock::new(KeyCache::default()));
    let latest = policy::latest_all(&store)?;
    drop(store);
    if config.broker.is_embedded() {
        broker::start_embedded(&config.broker, keys.clone())?;
        tracing::info!(listen = %config.broker.embedded_listen, "embedded broker started");
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
    let (stop_web, web_stopped) = tokio::sync::watch::channel(false);
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
    let result = service::run(&config, keys, async move {
        shutdown.await;
        let _ = stop_web.send(true);
    })
    .await;
    if let Some(web) = web {
        let _ = web.await;
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
