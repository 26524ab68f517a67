//! The ingest's async shell: two persistent MQTT sessions (lanes: alerts, and all the
//! rest), each with a fixed client id, clean session off and manual acks, subscribed
//! through the controllers' shared group and feeding a worker thread of its own that
//! verifies and stores batches. Acks flow back only after the commit, tagged with the
//! connection they came on, so an ack never reaches a later connection where the packet id
//! may mean another message.
//!
//! # No alert lost to a late subscription
//! A broker drops what nobody is subscribed to. The session is persistent (its
//! subscriptions and queued messages outlive a disconnect), so once it exists nothing is
//! lost; what remains is the moment before it first exists:
//! - With the embedded broker, routers cannot log in before the ingest's subscriptions are
//!   acknowledged: `keys`, the enrolled keys the broker's login check reads, stays empty
//!   (see [`Admission`]) until the broker has answered both lanes' SUBSCRIBE with success
//!   for every filter. A router refused meanwhile keeps its alerts in its disk queue and
//!   retries.
//! - With an external broker, the sessions are created at the controller's first start and
//!   kept by the broker across controller restarts (mosquitto: `persistence true`). Before
//!   the lanes there was one session, under the bulk lane's client id, subscribed to
//!   alerts too; the bulk lane unsubscribes that filter when it finds its session kept.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Packet, Publish, QoS, SubscribeReasonCode};
use smtpguard_common::{now_ms, Backoff};
use smtpguard_protocol::{topic, Body, Freshness, Kind, Status, Topic};
use tokio::sync::{mpsc, watch};

use super::{Inbound, Verifier};
use crate::broker::{self, BrokerError};
use crate::config::Config;
use crate::registry::KeyCache;
use crate::store::commands;
use crate::store::{Received, Store, StoreError};

/// The ingest could not start or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The MQTT client could not be configured.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The worker thread could not be spawned.
    #[error("spawning the ingest worker: {0}")]
    Spawn(std::io::Error),
}

/// Requests queued towards the MQTT client. Larger than any broker's in-flight window, so
/// an ack never waits for room.
const REQUEST_CAPACITY: usize = 10_000;

/// A command the worker found unanswered for a router that came back online.
#[derive(Debug)]
struct Resend {
    cpe_id: String,
    command_id: u64,
    wire: Vec<u8>,
}

/// Publishes buffered between the MQTT task and the worker.
const INBOUND_CAPACITY: usize = 10_000;

/// The ingest's two sessions with the broker, each with its own worker. Alerts have one of
/// their own, so an infection never waits behind telemetry: not behind a batch being
/// stored, and not behind a backlog in the broker (a replica restarting after a crash, or a
/// slow database). The broker keeps the backlog per session and hands a session's messages
/// out in order, a few hundred unacknowledged at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Lane {
    Alerts,
    Bulk,
}

impl Lane {
    const ALL: [Lane; 2] = [Lane::Alerts, Lane::Bulk];

    fn name(self) -> &'static str {
        match self {
            Lane::Alerts => "alerts",
            Lane::Bulk => "bulk",
        }
    }

    /// Whether messages of `kind` come in this lane.
    fn carries(self, kind: Kind) -> bool {
        (kind == Kind::Alert) == (self == Lane::Alerts)
    }

    /// The MQTT client id: the configured one for the bulk lane (the session of the
    /// controllers before there were lanes), with `-alerts` appended for the alerts.
    fn client_id(self, configured: &str) -> String {
        match self {
            Lane::Alerts => format!("{configured}{ALERTS_CLIENT_SUFFIX}"),
            Lane::Bulk => configured.to_string(),
        }
    }

    /// The subscription filters of this lane (`mine`) and of the other lanes, as the
    /// broker is asked for them: through the controllers' shared group, or plainly.
    fn filters(self, plain: bool) -> (Vec<String>, Vec<String>) {
        let form = |kind| {
            let f = topic::controller_filter(kind);
            if plain {
                topic::strip_share(&f).to_string()
            } else {
                f
            }
        };
        let (mine, others): (Vec<Kind>, Vec<Kind>) = topic::CONTROLLER_KINDS
            .into_iter()
            .partition(|k| self.carries(*k));
        (
            mine.into_iter().map(form).collect(),
            others.into_iter().map(form).collect(),
        )
    }
}

/// Appended to `broker.client_id` for the alerts' session.
pub const ALERTS_CLIENT_SUFFIX: &str = "-alerts";

/// Runs the ingest until `shutdown` resolves: both lanes (alerts, and the rest), on one database.
/// `admission` holds the embedded broker's login check empty until the broker has
/// acknowledged both lanes' subscriptions, then fills it with the enrolled keys; the
/// ingest hands it every reload (see the module docs). When one lane's worker stops (it
/// only does on a bug), the other lane stops too and the controller exits.
///
/// # Errors
/// [`IngestError`] when it cannot start.
pub async fn run(
    config: &Config,
    admission: Arc<Admission>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), IngestError> {
    let started = Instant::now();
    let store = Store::open_url(&config.database_url())?;
    let opened_ms = started.elapsed().as_millis() as u64;
    // `serve` loaded the keys a moment ago (and its refresher keeps them): not twice.
    let key_cache = match admission.latest() {
        Some(keys) => keys,
        None => KeyCache::load(&store)?,
    };
    tracing::info!(
        opened_ms,
        keys = key_cache.len(),
        ready_ms = started.elapsed().as_millis() as u64,
        "ingest starting: database open and keys at hand"
    );
    let freshness = Freshness {
        max_age_ms: config.ingest.max_age_secs.saturating_mul(1000),
        max_future_ms: config.ingest.max_future_secs.saturating_mul(1000),
    };
    // Each lane's replay windows hold what it has seen; the database arbitrates between
    // them as it does between replicas (see `Verifier::starting`).
    let start = |lane| {
        let verifier = Verifier::starting(key_cache.clone(), freshness);
        Session::start(config, lane, store.clone(), verifier, admission.clone())
    };
    let (alerts, bulk) = (start(Lane::Alerts)?, start(Lane::Bulk)?);
    let (stop_tx, stop) = watch::channel(false);
    let stop_tx = &stop_tx;
    let run_lane = |session: Session| {
        let stop = stop.clone();
        async move {
            session.run(stop).await;
            // Whichever way it ended, the other lane ends with it.
            let _ = stop_tx.send(true);
        }
    };
    let mut stopped = stop.clone();
    let forward = async {
        tokio::select! {
            () = shutdown => {}
            () = stop_turned(&mut stopped) => {}
        }
        let _ = stop_tx.send(true);
    };
    tokio::join!(forward, run_lane(alerts), run_lane(bulk));
    Ok(())
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stop_turned(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: dropped here, never held over an await.
    let _ = stop.wait_for(|s| *s).await;
}

/// One lane's MQTT session and worker, started.
struct Session {
    lane: Lane,
    client: AsyncClient,
    eventloop: rumqttc::EventLoop,
    worker: std::thread::JoinHandle<()>,
    in_tx: mpsc::Sender<(u64, Publish)>,
    ack_rx: mpsc::UnboundedReceiver<(u64, Publish)>,
    resend_rx: mpsc::UnboundedReceiver<Resend>,
    /// This lane's filters and the other lanes' (see [`Session::run`]).
    filters: (Vec<String>, Vec<String>),
    embedded: bool,
    admission: Arc<Admission>,
}

impl Session {
    fn start(
        config: &Config,
        lane: Lane,
        store: Store,
        verifier: Verifier,
        admission: Arc<Admission>,
    ) -> Result<Session, IngestError> {
        let mut options =
            broker::client_options(&config.broker, &lane.client_id(&config.broker.client_id))?;
        options.set_clean_session(false).set_manual_acks(true);
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let (in_tx, in_rx) = mpsc::channel::<(u64, Publish)>(INBOUND_CAPACITY);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel::<(u64, Publish)>();
        let (resend_tx, resend_rx) = mpsc::unbounded_channel::<Resend>();
        let worker = Worker {
            store,
            verifier,
            admission: admission.clone(),
            batch_max: config.ingest.batch_max,
            linger: Duration::from_millis(config.ingest.batch_linger_ms),
            db_path: config.db_path.clone(),
        };
        let worker = std::thread::Builder::new()
            .name(format!("ingest-{}", lane.name()))
            .spawn(move || worker.run(in_rx, ack_tx, resend_tx))
            .map_err(IngestError::Spawn)?;
        let embedded = config.broker.is_embedded();
        // rumqttd 0.20 keeps one delivery cursor per share group, so a group over several
        // filters loses messages; the embedded broker only ever has this one ingest, which
        // subscribes plainly. See `IngestConfig::shared_subscription` for mosquitto.
        let plain = embedded || !config.ingest.shared_subscription;
        Ok(Session {
            lane,
            client,
            eventloop,
            worker,
            in_tx,
            ack_rx,
            resend_rx,
            filters: lane.filters(plain),
            embedded,
            admission,
        })
    }

    /// Receives and hands to the worker until `stop` turns true or the worker stops; acks
    /// and resends go out from a task of their own ([`send_acks`]).
    ///
    /// The event loop's `poll` is never dropped half-way (only at the stop): a poll
    /// cancelled while it writes loses what it was writing, an ack (whose message then holds
    /// one of the broker's in-flight slots until the connection ends: enough of them and
    /// the broker sends nothing more) or a PINGREQ (read 30 s later as a dead connection,
    /// and everything unacknowledged comes again).
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let Session {
            lane,
            client,
            mut eventloop,
            worker,
            in_tx,
            ack_rx,
            resend_rx,
            filters: (mine, others),
            embedded,
            admission,
        } = self;
        let lane_name = lane.name();
        // Which connection a message came on: acks of an earlier one are dropped.
        let generation = Arc::new(AtomicU64::new(0));
        let sender = tokio::spawn(send_acks(
            client.clone(),
            ack_rx,
            resend_rx,
            generation.clone(),
        ));
        // Reconnect delays: exponential from 100 ms to 10 s with full jitter.
        let mut backoff = Backoff::new(100, 10_000);
        loop {
            let event = tokio::select! {
                () = stop_turned(&mut stop) => break,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    // The old connection's messages come again in this session.
                    generation.fetch_add(1, Ordering::AcqRel);
                    backoff.reset();
                    tracing::info!(
                        lane = lane_name,
                        session_present = ack.session_present,
                        "ingest connected"
                    );
                    // Subscriptions are not restored by the client after a reconnect;
                    // subscribe on every connection.
                    let filters = mine
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                    if let Err(e) = client.try_subscribe_many(filters) {
                        tracing::warn!(lane = lane_name, error = %e, "could not subscribe");
                    }
                    // A session an external broker kept from before the lanes (or from
                    // another lane layout) may hold the other lanes' filters too: their
                    // messages would come twice.
                    if ack.session_present && !embedded {
                        for f in &others {
                            if let Err(e) = client.try_unsubscribe(f.clone()) {
                                tracing::warn!(lane = lane_name, error = %e, "could not unsubscribe");
                            }
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let refused = ack
                        .return_codes
                        .iter()
                        .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                        .count();
                    if refused == 0 {
                        if admission.subscribed(lane) {
                            tracing::info!("ingest subscribed; routers may log in");
                        }
                    } else {
                        tracing::error!(lane = lane_name, refused, "the broker refused ingest subscriptions; routers stay out of the embedded broker");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let gen = generation.load(Ordering::Acquire);
                    if in_tx.send((gen, publish)).await.is_err() {
                        tracing::error!(lane = lane_name, "ingest worker stopped");
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // Acks still on their way belong to a connection that is gone.
                    generation.fetch_add(1, Ordering::AcqRel);
                    let delay = backoff.next_delay(rand::random());
                    tracing::warn!(lane = lane_name, error = %e, retry_ms = delay.as_millis() as u64, "ingest connection lost");
                    tokio::select! {
                        () = stop_turned(&mut stop) => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        drop(in_tx);
        // Unacked messages come again on the next start and are refused as replays if
        // they were stored, so stopping here loses nothing.
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while eventloop.poll().await.is_ok() {}
        })
        .await;
        let _ = tokio::task::spawn_blocking(move || worker.join()).await;
        sender.abort();
    }
}

/// Sends the worker's acks (each after its batch committed, and only on the connection its
/// message came on) and the commands to send again, waiting for room in the client's
/// request queue rather than dropping any: a restarted replica's backlog can bring
/// thousands of acks at once, and a dropped ack leaves its message with the broker.
async fn send_acks(
    client: AsyncClient,
    mut acks: mpsc::UnboundedReceiver<(u64, Publish)>,
    mut resends: mpsc::UnboundedReceiver<Resend>,
    generation: Arc<AtomicU64>,
) {
    loop {
        tokio::select! {
            Some((gen, publish)) = acks.recv() => {
                if gen == generation.load(Ordering::Acquire) && client.ack(&publish).await.is_err() {
                    break;
                }
            }
            Some(resend) = resends.recv() => {
                let topic = Topic::Command(resend.cpe_id.clone()).to_string();
                match client.publish(topic, QoS::AtLeastOnce, false, resend.wire).await {
                    Ok(()) => tracing::info!(cpe_id = %resend.cpe_id, id = resend.command_id, "unanswered command sent again: its router is back online"),
                    Err(e) => tracing::warn!(cpe_id = %resend.cpe_id, id = resend.command_id, error = %e, "could not queue a command to send again"),
                }
            }
            else => break,
        }
    }
}

/// The enrolled keys as the embedded broker's login check sees them: none until every
/// lane's subscriptions exist, then every change the workers
/// load. An external broker does not read them.
#[derive(Debug)]
pub struct Admission {
    shared: Arc<RwLock<KeyCache>>,
    /// The lanes whose subscriptions exist, and the newest keys loaded from the store.
    state: Mutex<(BTreeSet<Lane>, KeyCache)>,
}

impl Admission {
    /// Holds `shared` empty (nobody but the controller's own clients may log in) and
    /// remembers `latest` for when it opens.
    pub fn new(shared: Arc<RwLock<KeyCache>>, latest: KeyCache) -> Admission {
        if let Ok(mut s) = shared.write() {
            *s = KeyCache::closed();
        }
        Admission {
            shared,
            state: Mutex::new((BTreeSet::new(), latest)),
        }
    }

    fn is_open(subscribed: &BTreeSet<Lane>) -> bool {
        subscribed.len() == Lane::ALL.len()
    }

    /// Notes that `lane` has subscribed; once every lane has, publishes the newest keys to
    /// the broker. Returns true the first time it opens.
    fn subscribed(&self, lane: Lane) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let was_open = Self::is_open(&state.0);
        state.0.insert(lane);
        if !Self::is_open(&state.0) {
            return false;
        }
        if let Ok(mut shared) = self.shared.write() {
            *shared = state.1.clone();
        }
        !was_open
    }

    /// The newest keys loaded; `None` only if a thread panicked holding them.
    fn latest(&self) -> Option<KeyCache> {
        self.state.lock().ok().map(|state| state.1.clone())
    }

    /// Takes newly loaded keys; the broker sees them once open.
    pub fn update(&self, keys: KeyCache) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.1 = keys;
        if Self::is_open(&state.0) {
            if let Ok(mut shared) = self.shared.write() {
                *shared = state.1.clone();
            }
        }
    }
}

struct Worker {
    store: Store,
    verifier: Verifier,
    admission: Arc<Admission>,
    batch_max: usize,
    linger: Duration,
    db_path: PathBuf,
}

impl Worker {
    fn run(
        mut self,
        mut rx: mpsc::Receiver<(u64, Publish)>,
        acks: mpsc::UnboundedSender<(u64, Publish)>,
        resends: mpsc::UnboundedSender<Resend>,
    ) {
        let mut data_version = self.data_version();
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            let deadline = Instant::now() + self.linger;
            while batch.len() < self.batch_max {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if Instant::now() >= deadline {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            }
            let version = self.data_version();
            if version != data_version {
                data_version = version;
                self.reload_keys();
            }
            let inbound = batch
                .iter()
                .map(|(_, p)| Inbound {
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                })
                .collect();
            let checked = self.verifier.check(inbound, now_ms());
            loop {
                match self
                    .store
                    .write_batch(&checked.accepted, &checked.rejections)
                {
                    Ok(fresh) => {
                        self.resend_to_returning(&checked.accepted, &fresh, &resends);
                        let dups = fresh.iter().filter(|f| !**f).count() as u64;
                        if dups > 0 {
                            let _ = self.store.count_rejections(&[(
                                smtpguard_protocol::RejectionReason::Replay,
                                dups,
                            )]);
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, db = %self.db_path.display(), "storing a batch failed; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
            for item in batch {
                if acks.send(item).is_err() {
                    return;
                }
            }
        }
    }

    /// Commands issued while a router was offline were published to nobody (routers use
    /// clean sessions): when a router says it is online again, its unanswered, unexpired
    /// commands go out once more, oldest first. The router subscribed to its command topic
    /// before it published its online state, and refuses ids it has already applied.
    fn resend_to_returning(
        &self,
        accepted: &[Received],
        fresh: &[bool],
        resends: &mpsc::UnboundedSender<Resend>,
    ) {
        let back: BTreeSet<&str> = accepted
            .iter()
            .zip(fresh)
            .filter(|(_, fresh)| **fresh)
            .filter_map(|(m, _)| match &m.envelope.body {
                Body::State(s) if s.status == Status::Online => Some(m.envelope.cpe_id.as_str()),
                _ => None,
            })
            .collect();
        let now = now_ms();
        for cpe_id in back {
            let due = match commands::unanswered(self.store.db(), cpe_id, now) {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(cpe_id, error = %e, "could not look up unanswered commands");
                    continue;
                }
            };
            for (command_id, wire) in due {
                if let Err(e) = commands::note_resent(self.store.db(), cpe_id, command_id) {
                    tracing::warn!(cpe_id, command_id, error = %e, "could not count a resend");
                }
                let resend = Resend {
                    cpe_id: cpe_id.to_string(),
                    command_id,
                    wire,
                };
                if resends.send(resend).is_err() {
                    return;
                }
            }
        }
    }

    /// Changes when the enrolled keys may have changed (see [`Store::keys_marker`]); an
    /// error reads as "unchanged" and is tried again at the next batch.
    fn data_version(&self) -> String {
        self.store.keys_marker().unwrap_or_default()
    }

    fn reload_keys(&mut self) {
        match KeyCache::load(&self.store) {
            Ok(cache) => {
                self.admission.update(cache.clone());
                self.verifier.set_keys(cache);
            }
            Err(e) => tracing::warn!(error = %e, "reloading enrolled keys failed"),
        }
    }
}
