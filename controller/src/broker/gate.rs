//! The embedded broker's front door: every MQTT 3.1.1 client connects here, and the gate
//! bridges each admitted one into rumqttd's router through an in-process link (rumqttd
//! 0.20 has no ACL hook, and its router is reachable only through links, so nothing but
//! the gate can talk to it). One client costs one descriptor: its socket.
//!
//! Per connection the gate:
//! 1. reads the CONNECT (bounded size, within [`GateConfig::connect_timeout`]) and checks
//!    the login: the controller's user name and password, or a CPE whose client id equals
//!    its user name, enrolled, unrevoked, with its broker password
//!    ([`KeyCache::check_login`]) and a last will on its own state topic only
//!    ([`acl::may_will`]). A refused client gets a CONNACK refusal and is counted; it never
//!    reaches the router, so it cannot take over the session of the router it claims to be;
//! 2. waits for its turn on that client id: a newer admitted login ends the older session
//!    first (will published, link closed; what the older client still sends is judged and
//!    counted for [`TAKEOVER_DRAIN`]), then gets its own link, so the router never sees
//!    two links of one client id (its own takeover would leave the old link's events aimed
//!    at a connection id it has reused);
//! 3. reads the client's packets one frame at a time, refusing before buffering any frame
//!    above the size limit, checking every PUBLISH and SUBSCRIBE against [`acl`] and capping
//!    a CPE's subscriptions, and refusing whatever would make the router drop the link on
//!    its own (QoS 2, an out-of-order PUBACK, server-only packet types); a violation closes
//!    the connection and is counted ([`super::stats::STATS`]). A CPE's upload is paced by a
//!    token bucket (nothing is read while it waits, so TCP pushes back);
//! 4. writes what the router sends; while a write is pending it neither reads the client
//!    nor takes more from the router, and it tells the router it is ready for more only
//!    once a batch is written, so a client that does not read holds at most one batch here
//!    and `max_outgoing_packet_count` packets in the router; one that accepts nothing for
//!    [`GateConfig::write_stall_timeout`] is closed;
//! 5. closes a connection silent for 1.5 × its keep-alive, and a CPE's connection when it
//!    is revoked or its password rotated; when a connection ends without the client's
//!    DISCONNECT the gate publishes its last will itself (the router is given none).
//!
//! Memory per connection is one read buffer (at most the packet limit, released after a
//! large frame), one write batch ([`MAX_BATCH`] notifications) and the link's buffers;
//! connections are capped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::protocol::v4::{self, V4};
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Error as CodecError, LastWill, Packet, PingResp, Protocol,
    PubAck, PubAckReason, QoS,
};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::acl::{self, Identity};
use super::stats::STATS;
use crate::registry::{KeyCache, Login as LoginCheck};
use smtpguard_protocol::topic::PREFIX;

/// How long a new connection has to send its CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may accept none of the bytes the gate has for it.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a session taken over by a newer login of its client id still has its client's
/// packets judged (and dropped) before it is closed.
pub const TAKEOVER_DRAIN: Duration = Duration::from_secs(1);

/// Most topic filters one CPE connection may subscribe (it needs three).
pub const MAX_CPE_SUBSCRIPTIONS: usize = 16;

/// A CPE's sustained upload rate through the gate, bytes per second.
pub const CPE_BYTES_PER_SEC: u64 = 64 * 1024;

/// A CPE's upload burst through the gate, bytes.
pub const CPE_BURST_BYTES: u64 = 512 * 1024;

/// Most router notifications written to a client in one batch.
pub const MAX_BATCH: usize = 256;

/// Most QoS 1 messages the gate tracks as unacknowledged on one connection; the router
/// keeps at most 100 in flight, so more means the router broke its own bound.
const MAX_TRACKED_INFLIGHT: usize = 1024;

/// Read and write buffers above this capacity are released once empty.
const KEEP_BUFFER_BYTES: usize = 4096;

/// Bytes read from a socket at a time while a frame's length is not known yet.
const READ_CHUNK_BYTES: usize = 2048;

/// Keep-alive applied to a client that asked for none (0): the longest one it could ask.
const MAX_KEEP_ALIVE_SECS: u16 = u16::MAX;

/// Makes a router link for a client id (clean session or not): rumqttd's
/// `LinkBuilder::build` with the router's sender, `None` when the router refused (it is
/// full). Blocks until the router answers.
pub type LinkFactory = dyn Fn(&str, bool) -> Option<(LinkTx, LinkRx, Notification)> + Send + Sync;

/// What the gate needs to know.
pub struct GateConfig {
    /// Makes a router link for each admitted client.
    pub link: Arc<LinkFactory>,
    /// The controller's user name.
    pub controller_user: String,
    /// The controller's password (never empty).
    pub controller_password: String,
    /// Largest MQTT remaining length accepted from a client.
    pub max_packet_bytes: usize,
    /// Most simultaneous client connections.
    pub max_connections: usize,
    /// How long a new connection has to send its CONNECT ([`CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// How long a client may accept none of our bytes ([`WRITE_STALL_TIMEOUT`]).
    pub write_stall_timeout: Duration,
}

/// Accepts clients on `listener` until the process ends. `keys` is read at every login;
/// `keys_changed` ticks when it was reloaded, so connections of revoked CPEs and of CPEs
/// whose password was rotated are closed.
pub async fn run(
    listener: TcpListener,
    config: Arc<GateConfig>,
    keys: Arc<RwLock<KeyCache>>,
    keys_changed: watch::Receiver<u64>,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let sessions = Arc::new(Sessions::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: wait instead of spinning.
                tracing::warn!(error = %e, "embedded broker accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            STATS.dropped.add("connection_limit");
            drop(stream);
            continue;
        };
        let config = config.clone();
        let keys = keys.clone();
        let changed = keys_changed.clone();
        let sessions = sessions.clone();
        tokio::spawn(async move {
            if let Err(end) = serve(stream, &config, &keys, changed, &sessions).await {
                tracing::info!(%peer, reason = %end, "embedded broker closed a connection");
            }
            drop(slot);
        });
    }
}

/// Why the gate closed a connection (for the log; counted where decided).
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("login refused: {0}")]
    Refused(&'static str),
    #[error("{0}")]
    Denied(String),
    #[error("packet of {0} bytes above the limit")]
    TooLarge(usize),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("no CONNECT in time")]
    Timeout,
    #[error("silent for longer than its keep-alive")]
    KeepAlive,
    #[error("accepted nothing for too long")]
    Stalled,
    #[error("credentials changed")]
    CredentialsChanged,
    #[error("a newer login took the session over")]
    TakenOver,
    #[error("the client disconnected")]
    ClientDisconnect,
    #[error("the router closed the link")]
    RouterClosed,
    #[error("the router refused a link")]
    NoLink,
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// One frame from a client.
struct Frame {
    packet: Packet,
    /// Bytes on the wire.
    len: usize,
    /// The fixed header's first byte (type and flags: rumqttd keeps a PUBLISH's QoS to
    /// itself).
    first: u8,
}

/// A cancel-safe MQTT frame reader over a caller-owned buffer.
#[derive(Default)]
struct Reader {
    buf: BytesMut,
    /// A frame read ahead (while the login waited for its turn), returned first.
    held: Option<Frame>,
}

impl Reader {
    /// The next frame, `Ok(None)` when the peer closed between frames.
    /// A remaining length above `limit` is refused as soon as its header is in, before its
    /// body is buffered. Cancel-safe: bytes read stay in the buffer.
    async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        limit: usize,
    ) -> Result<Option<Frame>, End> {
        if let Some(frame) = self.held.take() {
            return Ok(Some(frame));
        }
        loop {
            match v4::check(self.buf.iter(), limit) {
                Ok(header) => {
                    let len = header.frame_length();
                    let packet = V4.read_mut(&mut self.buf, limit).map_err(malformed)?;
                    if self.buf.is_empty() && self.buf.capacity() > KEEP_BUFFER_BYTES {
                        self.buf = BytesMut::new();
                    }
                    return Ok(Some(Frame {
                        packet,
                        len,
                        first: header.byte1,
                    }));
                }
                Err(CodecError::InsufficientBytes(n)) => {
                    self.buf.reserve(n.max(READ_CHUNK_BYTES));
                }
                Err(CodecError::PayloadSizeLimitExceeded(n)) => return Err(End::TooLarge(n)),
                Err(e) => return Err(malformed(e)),
            }
            if r.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(End::Io(std::io::ErrorKind::UnexpectedEof.into()))
                };
            }
        }
    }
}

fn malformed(e: CodecError) -> End {
    tracing::debug!(error = %e, "malformed MQTT packet");
    End::Protocol("malformed packet")
}

const CONNACK_ID_REJECTED: [u8; 4] = [0x20, 0x02, 0x00, 0x02];
const CONNACK_SERVER_UNAVAILABLE: [u8; 4] = [0x20, 0x02, 0x00, 0x03];
const CONNACK_BAD_LOGIN: [u8; 4] = [0x20, 0x02, 0x00, 0x04];
const CONNACK_NOT_AUTHORIZED: [u8; 4] = [0x20, 0x02, 0x00, 0x05];

/// Constant-time equality of two byte strings of possibly different lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Pacing of one CPE's upload.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            tokens: CPE_BURST_BYTES as f64,
            at: Instant::now(),
        }
    }

    /// How long to wait before `n` more bytes may pass (and takes them).
    fn take(&mut self, n: usize) -> Duration {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * CPE_BYTES_PER_SEC as f64;
        self.tokens = (self.tokens + refill).min(CPE_BURST_BYTES as f64);
        self.at = now;
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / CPE_BYTES_PER_SEC as f64)
        }
    }
}

/// An admitted login.
struct Admitted {
    identity: Identity,
    /// The password hash a CPE logged in with (to notice a rotation).
    hash: Option<String>,
    client_id: String,
    clean_session: bool,
    keep_alive: u16,
    will: Option<LastWill>,
}

/// A refused login: the counter label and the CONNACK to answer.
type Refusal = (&'static str, [u8; 4]);

/// Whether the router accepts `id` as a client id (it drops a link whose id has these).
fn valid_client_id(id: &str) -> bool {
    !id.is_empty() && !id.contains(['+', '#', '/', '$'])
}

/// Checks a CONNECT.
fn admit(
    packet: Packet,
    config: &GateConfig,
    keys: &RwLock<KeyCache>,
) -> Result<Admitted, Refusal> {
    let Packet::Connect(connect, _, will, _, login) = packet else {
        return Err(("malformed", CONNACK_NOT_AUTHORIZED));
    };
    let Some(login) = login else {
        return Err(("bad_password", CONNACK_BAD_LOGIN));
    };
    let (identity, hash) = if login.username == config.controller_user {
        if config.controller_password.is_empty()
            || !same(
                login.password.as_bytes(),
                config.controller_password.as_bytes(),
            )
        {
            return Err(("controller_password", CONNACK_BAD_LOGIN));
        }
        (Identity::Controller, None)
    } else {
        if connect.client_id != login.username {
            return Err(("client_id_mismatch", CONNACK_NOT_AUTHORIZED));
        }
        let Ok(keys) = keys.read() else {
            return Err(("malformed", CONNACK_NOT_AUTHORIZED));
        };
        match keys.check_login(&login.username, login.password.as_bytes()) {
            LoginCheck::Admitted => {}
            refused @ (LoginCheck::UnknownCpe | LoginCheck::BadPassword) => {
                return Err((refused.as_str(), CONNACK_BAD_LOGIN));
            }
            refused @ LoginCheck::NotReady => {
                return Err((refused.as_str(), CONNACK_SERVER_UNAVAILABLE));
            }
            refused => return Err((refused.as_str(), CONNACK_NOT_AUTHORIZED)),
        }
        let hash = keys.password_hash(&login.username).map(str::to_owned);
        (Identity::Cpe(login.username.clone()), hash)
    };
    if !valid_client_id(&connect.client_id) {
        return Err(("malformed", CONNACK_ID_REJECTED));
    }
    if let Some(will) = &will {
        let allowed = std::str::from_utf8(&will.topic)
            .is_ok_and(|topic| valid_topic(topic) && acl::may_will(&identity, topic));
        if !allowed {
            return Err(("will_denied", CONNACK_NOT_AUTHORIZED));
        }
    }
    Ok(Admitted {
        identity,
        hash,
        client_id: connect.client_id,
        clean_session: connect.clean_session,
        keep_alive: connect.keep_alive,
        will,
    })
}

/// A topic a client may publish on: not empty, no wildcard.
fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#'])
}

/// The sessions by client id: one at a time each, the newest login wins.
#[derive(Default)]
struct Sessions {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// One client id's turn: held by its live session; `newest` counts its logins.
struct Slot {
    turn: tokio::sync::Mutex<()>,
    newest: watch::Sender<u64>,
}

/// A login's place in its client id's queue; leaves the table when dropped.
struct Place<'a> {
    sessions: &'a Sessions,
    client_id: String,
    slot: Option<Arc<Slot>>,
    number: u64,
}

impl Sessions {
    fn enter(&self, client_id: &str) -> Place<'_> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots
            .entry(client_id.to_owned())
            .or_insert_with(|| {
                Arc::new(Slot {
                    turn: tokio::sync::Mutex::new(()),
                    newest: watch::channel(0).0,
                })
            })
            .clone();
        let mut number = 0;
        slot.newest.send_modify(|n| {
            *n += 1;
            number = *n;
        });
        Place {
            sessions: self,
            client_id: client_id.to_owned(),
            slot: Some(slot),
            number,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().map_or(0, |s| s.len())
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut slots = self
            .sessions
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = self.slot.take() {
            // Ours and the table's: nobody else is queued for this client id.
            if Arc::strong_count(&slot) == 2 {
                slots.remove(&self.client_id);
            }
        }
    }
}

async fn serve(
    mut client: TcpStream,
    config: &GateConfig,
    keys: &RwLock<KeyCache>,
    mut changed: watch::Receiver<u64>,
    sessions: &Sessions,
) -> Result<(), End> {
    let _ = client.set_nodelay(true);
    let limit = config.max_packet_bytes;
    let mut reader = Reader::default();
    let first =
        match tokio::time::timeout(config.connect_timeout, reader.next(&mut client, limit)).await {
            Err(_) => {
                STATS.dropped.add("timeout");
                return Err(End::Timeout);
            }
            Ok(Err(End::TooLarge(n))) => {
                STATS.dropped.add("payload_size_limit_exceeded");
                return Err(End::TooLarge(n));
            }
            Ok(Err(e)) => {
                STATS.logins_refused.add("malformed");
                return Err(e);
            }
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(frame))) => frame.packet,
        };
    if !matches!(first, Packet::Connect(..)) {
        STATS.logins_refused.add("malformed");
        return Err(End::Protocol("first packet is not CONNECT"));
    }
    let admitted = match admit(first, config, keys) {
        Ok(a) => a,
        Err((reason, connack)) => {
            STATS.logins_refused.add(reason);
            let _ = client.write_all(&connack).await;
            let _ = client.shutdown().await;
            return Err(End::Refused(reason));
        }
    };

    // Wait for the previous session of this client id to end (it is told to).
    let place = sessions.enter(&admitted.client_id);
    let Some(slot) = place.slot.as_ref() else {
        return Err(End::NoLink);
    };
    // Meanwhile the client's next frame is judged by its header (size) and held, so what a
    // client sends right after its CONNECT is refused and counted even if a newer login of
    // the same client id overtakes it.
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let turn = loop {
        tokio::select! {
            biased;
            r = reader.next(&mut client, limit), if reader.held.is_none() => match r {
                Ok(Some(frame)) => reader.held = Some(frame),
                Ok(None) => return Ok(()),
                Err(End::TooLarge(n)) => {
                    STATS.dropped.add("payload_size_limit_exceeded");
                    return Err(End::TooLarge(n));
                }
                Err(e @ End::Protocol(_)) => {
                    STATS.dropped.add("protocol_violation");
                    return Err(e);
                }
                Err(e) => return Err(e),
            },
            turn = slot.turn.lock() => break turn,
            _ = tokio::time::sleep_until(deadline) => {
                STATS.sessions_ended.add("upstream_unreachable");
                let _ = client.write_all(&CONNACK_SERVER_UNAVAILABLE).await;
                return Err(End::NoLink);
            }
        }
    };
    let link = config.link.clone();
    // A CPE's link is always a clean session: its subscriptions ride on filters shared by
    // every CPE (see `shared_filter`), which a kept session would restore without the
    // gate knowing what to deliver. (The agent asks for a clean session anyway.)
    let clean = admitted.clean_session || matches!(admitted.identity, Identity::Cpe(_));
    let id = admitted.client_id.clone();
    let built = tokio::task::spawn_blocking(move || link(&id, clean)).await;
    let Ok(Some((link_tx, link_rx, connack))) = built else {
        STATS.sessions_ended.add("upstream_unreachable");
        let _ = client.write_all(&CONNACK_SERVER_UNAVAILABLE).await;
        return Err(End::NoLink);
    };
    let mut out = BytesMut::new();
    if let Some(packet) = Option::<Packet>::from(connack) {
        encode(packet, &mut out)?;
    }
    changed.borrow_and_update();
    let mut newest = slot.newest.subscribe();
    let keep_alive = Duration::from_secs(u64::from(if admitted.keep_alive == 0 {
        MAX_KEEP_ALIVE_SECS
    } else {
        admitted.keep_alive
    }))
    .mul_f32(1.5);
    let mut bridge = Bridge::new(
        admitted.identity,
        admitted.hash,
        keep_alive,
        (link_tx, link_rx),
        out,
    );
    let end = bridge
        .run(
            &mut client,
            &mut reader,
            config,
            keys,
            &mut changed,
            &mut newest,
            place.number,
        )
        .await;
    match &end {
        End::ClientDisconnect | End::RouterClosed | End::NoLink => {}
        _ => bridge.close(admitted.will).await,
    }
    drop(turn);
    if matches!(end, End::TakenOver) {
        // The newer login goes ahead; what this client had on its way is still judged
        // (and counted) for a moment, then dropped, so a takeover hides no violation.
        let drain = async {
            while let Ok(Some(frame)) = reader.next(&mut client, limit).await {
                if bridge.judge(frame.packet, frame.first).is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(TAKEOVER_DRAIN, drain).await;
    }
    drop(bridge);
    match end {
        End::ClientDisconnect => Ok(()),
        e => Err(e),
    }
}

/// One admitted client bridged to its router link.
struct Bridge {
    identity: Identity,
    hash: Option<String>,
    /// How long the client may stay silent (1.5 × its keep-alive).
    keep_alive: Duration,
    link_tx: LinkTx,
    link_rx: LinkRx,
    /// Encoded packets not yet accepted by the client.
    out: BytesMut,
    /// Packet ids of QoS 1 messages the router sent on this link and that are not yet
    /// acknowledged, in the router's order; `true` for those the gate did not deliver (it
    /// acknowledges them itself when they reach the head: the router takes acks in order).
    inflight: VecDeque<(u16, bool)>,
    /// Acknowledgements the gate owes the router, in order.
    router_acks: Vec<u16>,
    /// A CPE's subscribed topics (exact names): what its link may deliver to it.
    deliver: Vec<String>,
    /// Scratch space for a message that is not delivered.
    scratch: BytesMut,
    /// The router paused this link; tell it to resume once `out` is written.
    wake_after_write: bool,
    subscriptions: usize,
    bucket: Bucket,
}

/// What to do with a client's packet.
enum Step {
    Forward(Packet),
    Reply(Packet),
    Disconnect,
}

impl Bridge {
    /// A bridge for a client just admitted: nothing in flight, nothing subscribed, a full
    /// upload bucket; `out` holds what the client is sent first (its CONNACK).
    fn new(
        identity: Identity,
        hash: Option<String>,
        keep_alive: Duration,
        (link_tx, link_rx): (LinkTx, LinkRx),
        out: BytesMut,
    ) -> Bridge {
        Bridge {
            identity,
            hash,
            keep_alive,
            link_tx,
            link_rx,
            out,
            inflight: VecDeque::new(),
            router_acks: Vec::new(),
            deliver: Vec::new(),
            scratch: BytesMut::new(),
            wake_after_write: false,
            subscriptions: 0,
            bucket: Bucket::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &mut self,
        client: &mut TcpStream,
        reader: &mut Reader,
        config: &GateConfig,
        keys: &RwLock<KeyCache>,
        changed: &mut watch::Receiver<u64>,
        newest: &mut watch::Receiver<u64>,
        number: u64,
    ) -> End {
        let (mut client_r, mut client_w) = client.split();
        let limit = config.max_packet_bytes;
        let mut heard = Instant::now();
        let mut wrote = Instant::now();
        let mut paused_until: Option<Instant> = None;
        let mut keys_watched = matches!(self.identity, Identity::Cpe(_));
        loop {
            let now = Instant::now();
            if paused_until.is_some_and(|t| t <= now) {
                paused_until = None;
            }
            let writing = !self.out.is_empty();
            let reading = !writing && paused_until.is_none();
            let deadline = if writing {
                wrote + config.write_stall_timeout
            } else {
                heard.max(paused_until.unwrap_or(heard)) + self.keep_alive
            };
            let wake = paused_until.map_or(deadline, |p| p.min(deadline));
            tokio::select! {
                biased;
                w = client_w.write_buf(&mut self.out), if writing => {
                    match w {
                        Ok(0) => return End::Io(std::io::ErrorKind::WriteZero.into()),
                        Ok(_) => wrote = Instant::now(),
                        Err(e) => return End::Io(e),
                    }
                    if self.out.is_empty() {
                        if self.out.capacity() > KEEP_BUFFER_BYTES {
                            self.out = BytesMut::new();
                        }
                        if std::mem::take(&mut self.wake_after_write)
                            && self.link_rx.wake().await.is_err()
                        {
                            return End::RouterClosed;
                        }
                    }
                }
                r = reader.next(&mut client_r, limit), if reading => {
                    let Frame { packet, len, first } = match r {
                        Ok(Some(p)) => p,
                        Ok(None) => return End::Io(std::io::ErrorKind::UnexpectedEof.into()),
                        Err(End::TooLarge(n)) => {
                            STATS.dropped.add("payload_size_limit_exceeded");
                            return End::TooLarge(n);
                        }
                        Err(e @ End::Protocol(_)) => {
                            STATS.dropped.add("protocol_violation");
                            return e;
                        }
                        Err(e) => return e,
                    };
                    heard = Instant::now();
                    let step = match self.judge(packet, first) {
                        Ok(s) => s,
                        Err(e) => return e,
                    };
                    if matches!(self.identity, Identity::Cpe(_)) {
                        let wait = self.bucket.take(len);
                        if !wait.is_zero() {
                            paused_until = Some(Instant::now() + wait);
                        }
                    }
                    match step {
                        Step::Forward(p) => {
                            if self.link_tx.send(p).await.is_err() || !self.flush_acks().await {
                                return End::RouterClosed;
                            }
                        }
                        Step::Reply(p) => {
                            if let Err(e) = encode(p, &mut self.out) {
                                return e;
                            }
                        }
                        Step::Disconnect => {
                            // The router ends the link and forgets the will.
                            let bye = Packet::Disconnect(
                                Disconnect { reason_code: DisconnectReasonCode::NormalDisconnection },
                                None,
                            );
                            let _ = self.link_tx.send(bye).await;
                            return End::ClientDisconnect;
                        }
                    }
                }
                n = self.link_rx.next(), if !writing => {
                    if let Err(e) = self.take_batch(n) {
                        return e;
                    }
                    if !self.flush_acks().await {
                        return End::RouterClosed;
                    }
                }
                _ = async { newest.wait_for(|n| *n > number).await.is_ok() } => {
                    STATS.sessions_ended.add("taken_over");
                    return End::TakenOver;
                }
                r = changed.changed(), if keys_watched => {
                    if r.is_err() {
                        keys_watched = false;
                        continue;
                    }
                    if let Identity::Cpe(id) = &self.identity {
                        let current = keys
                            .read()
                            .ok()
                            .and_then(|k| k.password_hash(id).map(str::to_owned));
                        if current.is_none() || current != self.hash {
                            STATS.sessions_ended.add("credentials_changed");
                            return End::CredentialsChanged;
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if writing && now >= deadline {
                        STATS.dropped.add("stalled_reader");
                        return End::Stalled;
                    }
                    if !writing && now >= deadline {
                        STATS.dropped.add("keep_alive_timeout");
                        return End::KeepAlive;
                    }
                }
            }
        }
    }

    /// Encodes the notification `first` and whatever else the router has ready (up to
    /// [`MAX_BATCH`]) into `out`.
    fn take_batch(&mut self, first: Result<Option<Notification>, LinkError>) -> Result<(), End> {
        match first {
            Ok(Some(n)) => self.note(n)?,
            Ok(None) => {}
            Err(_) => return Err(router_closed()),
        }
        for _ in 1..MAX_BATCH {
            match poll_now(self.link_rx.next()) {
                None => break,
                Some(Ok(Some(n))) => self.note(n)?,
                Some(Ok(None)) => {}
                Some(Err(_)) => return Err(router_closed()),
            }
        }
        Ok(())
    }

    /// Encodes one router notification for the client.
    fn note(&mut self, note: Notification) -> Result<(), End> {
        match note {
            Notification::Forward(forward) => {
                let delivered = match &self.identity {
                    Identity::Controller => true,
                    Identity::Cpe(_) => self
                        .deliver
                        .iter()
                        .any(|t| t.as_bytes() == forward.publish.topic.as_ref()),
                };
                let pkid = if delivered {
                    let start = self.out.len();
                    encode(Packet::Publish(forward.publish, None), &mut self.out)?;
                    self.out.get(start..).and_then(publish_pkid)
                } else {
                    self.scratch.clear();
                    encode(Packet::Publish(forward.publish, None), &mut self.scratch)?;
                    publish_pkid(&self.scratch)
                };
                if let Some(pkid) = pkid {
                    if self.inflight.len() >= MAX_TRACKED_INFLIGHT {
                        return Err(End::Protocol("router exceeded its in-flight bound"));
                    }
                    if delivered || !self.inflight.is_empty() {
                        self.inflight.push_back((pkid, !delivered));
                    } else {
                        self.router_acks.push(pkid);
                    }
                }
                if self.scratch.capacity() > KEEP_BUFFER_BYTES {
                    self.scratch = BytesMut::new();
                }
                Ok(())
            }
            Notification::Unschedule => {
                self.wake_after_write = true;
                Ok(())
            }
            Notification::Disconnect(..) => Err(router_closed()),
            other => match Option::<Packet>::from(other) {
                Some(packet) => encode(packet, &mut self.out),
                None => Ok(()),
            },
        }
    }

    /// Checks one client packet against the ACL and against what would make the router
    /// drop the link; counts and refuses a violation.
    fn judge(&mut self, packet: Packet, first: u8) -> Result<Step, End> {
        let violation = |what: &'static str| {
            STATS.dropped.add("protocol_violation");
            End::Protocol(what)
        };
        match packet {
            Packet::Publish(publish, _) => {
                if (first >> 1) & 3 == 2 {
                    return Err(violation("QoS 2 is not supported"));
                }
                let Ok(topic) = std::str::from_utf8(&publish.topic) else {
                    return Err(violation("topic is not UTF-8"));
                };
                if !valid_topic(topic) {
                    return Err(violation("invalid topic"));
                }
                if !acl::may_publish(&self.identity, topic, publish.retain) {
                    STATS.acl_denied.add("publish");
                    return Err(End::Denied(format!("publish to {topic:?}")));
                }
                Ok(Step::Forward(Packet::Publish(publish, None)))
            }
            Packet::PubAck(ack, _) => {
                if self.inflight.front() != Some(&(ack.pkid, false)) {
                    return Err(violation("PUBACK out of order or unsolicited"));
                }
                self.inflight.pop_front();
                while let Some(&(pkid, true)) = self.inflight.front() {
                    self.router_acks.push(pkid);
                    self.inflight.pop_front();
                }
                Ok(Step::Forward(Packet::PubAck(ack, None)))
            }
            Packet::Subscribe(mut subscribe, _) => {
                for f in &mut subscribe.filters {
                    if !acl::may_subscribe(&self.identity, &f.path) {
                        STATS.acl_denied.add("subscribe");
                        return Err(End::Denied(format!("subscribe to {:?}", f.path)));
                    }
                    if let Identity::Cpe(id) = &self.identity {
                        let shared = shared_filter(id, &f.path);
                        if !self.deliver.contains(&f.path) {
                            self.deliver.push(f.path.clone());
                        }
                        if let Some(shared) = shared {
                            f.path = shared;
                        }
                    }
                    if f.path.is_empty()
                        || (f.path.starts_with('$') && !f.path.starts_with("$share/"))
                    {
                        return Err(violation("invalid filter"));
                    }
                    if f.qos == QoS::ExactlyOnce {
                        f.qos = QoS::AtLeastOnce;
                    }
                }
                self.subscriptions += subscribe.filters.len();
                if matches!(self.identity, Identity::Cpe(_))
                    && self.subscriptions > MAX_CPE_SUBSCRIPTIONS
                {
                    STATS.acl_denied.add("subscription_limit");
                    return Err(End::Denied("too many subscriptions".into()));
                }
                Ok(Step::Forward(Packet::Subscribe(subscribe, None)))
            }
            Packet::Unsubscribe(mut unsubscribe, _) => {
                if let Identity::Cpe(id) = &self.identity {
                    for f in &mut unsubscribe.filters {
                        self.deliver.retain(|t| t != f);
                        if let Some(shared) = shared_filter(id, f) {
                            *f = shared;
                        }
                    }
                }
                Ok(Step::Forward(Packet::Unsubscribe(unsubscribe, None)))
            }
            Packet::PingReq(_) => Ok(Step::Reply(Packet::PingResp(PingResp))),
            Packet::Disconnect(..) => Ok(Step::Disconnect),
            Packet::Connect(..) => Err(violation("second CONNECT")),
            Packet::PubRec(..) | Packet::PubRel(..) | Packet::PubComp(..) => {
                Err(violation("QoS 2 is not supported"))
            }
            _ => Err(violation("packet type a client does not send")),
        }
    }

    /// Sends the router the acknowledgements the gate owes it; false when the link is gone.
    async fn flush_acks(&mut self) -> bool {
        for pkid in std::mem::take(&mut self.router_acks) {
            let ack = PubAck {
                pkid,
                reason: PubAckReason::Success,
            };
            if self.link_tx.send(Packet::PubAck(ack, None)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Ends the link for a session the client did not end itself: its last will, then the
    /// disconnection (which the router takes as the end of the link, and for a persistent
    /// session as the moment to keep its state).
    async fn close(&mut self, will: Option<LastWill>) {
        if let Some(publish) = will.and_then(will_publish) {
            let _ = self.link_tx.send(publish).await;
        }
        let bye = Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        );
        let _ = self.link_tx.send(bye).await;
    }
}

/// The router filter that carries CPE `id`'s subscription to its own `filter` (its policy
/// or command topic): the same wildcard filter for every CPE, `None` for other filters.
///
/// rumqttd matches every new filter against every topic it has seen and every new topic
/// against every filter, so one filter per CPE would make a fleet's logins and first
/// messages cost the square of its size. With one filter for all, the gate delivers a CPE
/// only the topics it subscribed (and acknowledges the others for it); the price is that
/// each command and per-CPE policy is offered to every CPE link, and a CPE logging in is
/// offered every retained per-CPE policy, each dropped by the gate but its own.
fn shared_filter(id: &str, filter: &str) -> Option<String> {
    let leaf = acl::own_leaf(id, filter)?;
    Some(format!("{PREFIX}/cpe/+/{leaf}"))
}

/// The packet id of an encoded PUBLISH frame of QoS 1 or 2 (`None` for QoS 0 or a frame
/// that is not a whole PUBLISH).
fn publish_pkid(frame: &[u8]) -> Option<u16> {
    let first = *frame.first()?;
    if first >> 4 != 3 || (first >> 1) & 3 == 0 {
        return None;
    }
    let mut i = 1;
    while frame.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let topic_len = usize::from(u16::from_be_bytes([*frame.get(i + 1)?, *frame.get(i + 2)?]));
    let at = i + 3 + topic_len;
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

/// A client's last will as the PUBLISH the gate sends for it (QoS 2 sent as 1). rumqttd
/// builds a QoS 1 PUBLISH only by decoding one, so this encodes and decodes.
fn will_publish(will: LastWill) -> Option<Packet> {
    let qos: u8 = if will.qos == QoS::AtMostOnce { 0 } else { 1 };
    let mut body = BytesMut::with_capacity(will.topic.len() + will.message.len() + 4);
    body.extend_from_slice(&u16::try_from(will.topic.len()).ok()?.to_be_bytes());
    body.extend_from_slice(&will.topic);
    if qos == 1 {
        body.extend_from_slice(&1u16.to_be_bytes());
    }
    body.extend_from_slice(&will.message);
    let mut frame = BytesMut::with_capacity(body.len() + 5);
    frame.extend_from_slice(&[0x30 | (qos << 1) | u8::from(will.retain)]);
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        frame.extend_from_slice(&[if len > 0 { byte | 0x80 } else { byte }]);
        if len == 0 {
            break;
        }
    }
    frame.extend_from_slice(&body);
    V4.read_mut(&mut frame, usize::MAX).ok()
}

/// The router ended a link on its own (counted).
fn router_closed() -> End {
    STATS.sessions_ended.add("broker_closed");
    End::RouterClosed
}

/// Polls `f` once: its output if it is ready now.
fn poll_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Appends a packet for the client (MQTT 3.1.1, no properties) to `out`. A DISCONNECT
/// from the router is not written (3.1.1 has none from the server).
fn encode(packet: Packet, out: &mut BytesMut) -> Result<(), End> {
    let packet = match packet {
        Packet::ConnAck(p, _) => Packet::ConnAck(p, None),
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::SubAck(p, _) => Packet::SubAck(p, None),
        Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
        p @ Packet::PingResp(_) => p,
        _ => return Ok(()),
    };
    V4.write(packet, out)
        .map(|_| ())
        .map_err(|_| End::Protocol("unencodable packet from the router"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn one(bytes: &[u8], limit: usize) -> Result<Option<Frame>, End> {
        let mut r = bytes;
        Reader::default().next(&mut r, limit).await
    }

    #[tokio::test]
    async fn frames_are_bounded_before_buffering() {
        // PINGREQ
        assert!(matches!(
            one(&[0xc0, 0x00], 10).await,
            Ok(Some(Frame {
                packet: Packet::PingReq(_),
                len: 2,
                first: 0xc0
            }))
        ));
        // Remaining length 200 > limit 100: refused before the body is read.
        assert!(matches!(
            one(&[0x30, 0xc8, 0x01], 100).await,
            Err(End::TooLarge(200))
        ));
        // Five length bytes.
        assert!(matches!(
            one(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f], usize::MAX).await,
            Err(End::Protocol(_))
        ));
        assert!(matches!(one(&[], 10).await, Ok(None)));
        // Cut in the middle of a frame.
        assert!(matches!(
            one(&[0x30, 0x04, 0x00], 10).await,
            Err(End::Io(_))
        ));
        // Reserved packet type.
        assert!(matches!(
            one(&[0xf0, 0x00], 10).await,
            Err(End::Protocol(_))
        ));
    }

    fn bridge_for(identity: Identity) -> Bridge {
        // A link to nowhere: judge() never touches it.
        let router = rumqttd::Router::new(
            0,
            rumqttd::RouterConfig {
                max_connections: 4,
                max_outgoing_packet_count: 10,
                max_segment_size: 1024,
                max_segment_count: 1,
                ..rumqttd::RouterConfig::default()
            },
        );
        let tx = router.spawn();
        let (link_tx, link_rx, _) = rumqttd::local::LinkBuilder::new("judge", tx)
            .build()
            .expect("link");
        Bridge::new(
            identity,
            None,
            Duration::from_secs(1),
            (link_tx, link_rx),
            BytesMut::new(),
        )
    }

    fn judge(bridge: &mut Bridge, bytes: &[u8]) -> Result<Step, End> {
        let mut b = BytesMut::from(bytes);
        let packet = V4.read_mut(&mut b, 1 << 16).expect("packet");
        bridge.judge(packet, bytes[0])
    }

    #[test]
    fn wills_and_forwards_carry_their_packet_ids() {
        let will = LastWill {
            topic: "smtpguard/v1/cpe/a/state".into(),
            message: vec![7u8; 300].into(),
            qos: QoS::ExactlyOnce,
            retain: true,
        };
        let publish = will_publish(will).expect("will");
        let mut out = BytesMut::new();
        encode(publish, &mut out).expect("encoded");
        assert_eq!(out[0], 0x33, "QoS 1, retained");
        assert_eq!(publish_pkid(&out), Some(1));
        assert_eq!(publish_pkid(&[0x30, 0x03, 0x00, 0x01, b'x']), None);
        assert_eq!(publish_pkid(&[0x32, 0x03, 0x00, 0x01, b'x']), None);
    }

    #[test]
    fn subscribe_publish_and_acks_are_checked() {
        let mut cpe = bridge_for(Identity::Cpe("a".into()));
        // SUBSCRIBE pkid 1, "#" qos 1
        let sub_all = [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x01];
        assert!(matches!(judge(&mut cpe, &sub_all), Err(End::Denied(_))));
        let mut controller = bridge_for(Identity::Controller);
        assert!(matches!(
            judge(&mut controller, &sub_all),
            Ok(Step::Forward(_))
        ));
        // "$SYS/#" would make the router drop the link: refused here.
        let sys = [
            0x82, 0x0b, 0x00, 0x01, 0x00, 0x06, b'$', b'S', b'Y', b'S', b'/', b'#', 0x00,
        ];
        assert!(matches!(
            judge(&mut controller, &sys),
            Err(End::Protocol(_))
        ));
        // PUBLISH qos0 to "x"
        let publish = [0x30, 0x04, 0x00, 0x01, b'x', b'!'];
        assert!(matches!(judge(&mut cpe, &publish), Err(End::Denied(_))));
        // QoS 2 publish from the controller.
        let qos2 = [0x34, 0x06, 0x00, 0x01, b'x', 0x00, 0x01, b'!'];
        assert!(matches!(
            judge(&mut controller, &qos2),
            Err(End::Protocol(_))
        ));
        // A PUBACK for nothing in flight, then one in order.
        let puback = [0x40, 0x02, 0x00, 0x07];
        assert!(matches!(
            judge(&mut controller, &puback),
            Err(End::Protocol(_))
        ));
        controller.inflight.push_back((7, false));
        assert!(matches!(
            judge(&mut controller, &puback),
            Ok(Step::Forward(_))
        ));
        // PINGREQ is answered here; a SUBACK from a client is refused.
        assert!(matches!(
            judge(&mut controller, &[0xc0, 0x00]),
            Ok(Step::Reply(Packet::PingResp(_)))
        ));
        assert!(matches!(
            judge(&mut controller, &[0x90, 0x03, 0x00, 0x01, 0x00]),
            Err(End::Protocol(_))
        ));
    }

    fn qos1(topic: &str, pkid: u16) -> Notification {
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[0x32, (topic.len() + 5) as u8, 0, topic.len() as u8]);
        frame.extend_from_slice(topic.as_bytes());
        frame.extend_from_slice(&pkid.to_be_bytes());
        frame.extend_from_slice(b"!");
        let Ok(Packet::Publish(publish, _)) = V4.read_mut(&mut frame, 1 << 16) else {
            panic!("publish");
        };
        Notification::Forward(rumqttd::Forward {
            cursor: None,
            size: 0,
            publish,
            properties: None,
        })
    }

    #[test]
    fn a_cpe_gets_only_its_own_topics_from_the_shared_filters_and_acks_stay_in_order() {
        let mut cpe = bridge_for(Identity::Cpe("a".into()));
        // SUBSCRIBE pkid 1 to its own command topic, QoS 1.
        let own = "smtpguard/v1/cpe/a/command";
        let mut sub = vec![
            0x82,
            (own.len() + 5) as u8,
            0x00,
            0x01,
            0x00,
            own.len() as u8,
        ];
        sub.extend_from_slice(own.as_bytes());
        sub.push(0x01);
        let Ok(Step::Forward(Packet::Subscribe(carried, _))) = judge(&mut cpe, &sub) else {
            panic!("subscription refused");
        };
        assert_eq!(carried.filters[0].path, "smtpguard/v1/cpe/+/command");
        // Another CPE's command: not delivered, acknowledged by the gate at once.
        cpe.note(qos1("smtpguard/v1/cpe/b/command", 1))
            .expect("note");
        assert!(cpe.out.is_empty());
        assert_eq!(cpe.router_acks, vec![1]);
        cpe.router_acks.clear();
        // Its own: delivered; another behind it waits for the client's ack of the first.
        cpe.note(qos1(own, 2)).expect("note");
        cpe.note(qos1("smtpguard/v1/cpe/ab/command", 3))
            .expect("note");
        assert_eq!(publish_pkid(&cpe.out), Some(2));
        assert!(cpe.out.windows(own.len()).any(|w| w == own.as_bytes()));
        assert!(!cpe.out.windows(6).any(|w| w == b"cpe/ab"));
        assert!(cpe.router_acks.is_empty());
        assert!(matches!(
            judge(&mut cpe, &[0x40, 0x02, 0x00, 0x02]),
            Ok(Step::Forward(Packet::PubAck(..)))
        ));
        assert_eq!(cpe.router_acks, vec![3]);
        assert!(cpe.inflight.is_empty());
    }

    #[test]
    fn a_client_id_queue_lets_the_newest_login_in_and_empties() {
        let sessions = Sessions::default();
        let first = sessions.enter("a");
        let second = sessions.enter("a");
        assert!(second.number > first.number);
        assert_eq!(sessions.len(), 1);
        drop(first);
        assert_eq!(sessions.len(), 1);
        drop(second);
        assert_eq!(sessions.len(), 0);
    }
}
