//! The embedded broker's front door: an MQTT 3.1.1 gatekeeper in front of rumqttd, which
//! has no ACL hook.
//!
//! Every client connects here; rumqttd itself listens on an ephemeral loopback port and
//! admits only logins carrying this process's random upstream secret, which only the gate
//! knows. Per connection the gate:
//! 1. reads the CONNECT (bounded size, within [`CONNECT_TIMEOUT`]) and checks the login:
//!    the controller's user name and password, or a CPE whose client id equals its user
//!    name, enrolled, unrevoked, with its broker password ([`KeyCache::check_login`]) and
//!    a last will on its own state topic only ([`acl::may_will`]). A refused client gets a
//!    CONNACK refusal and is counted; it never reaches rumqttd, so it cannot take over the
//!    session of the router it claims to be;
//! 2. forwards the CONNECT with the password replaced by the upstream secret;
//! 3. forwards the client's packets one frame at a time, refusing before buffering any
//!    frame above the size limit, checking every PUBLISH and SUBSCRIBE against [`acl`]
//!    and capping a CPE's subscriptions; a violation closes the connection and is counted
//!    ([`super::stats::STATS`]). A CPE's upload is paced by a token bucket (back-pressure
//!    through TCP, nothing buffered);
//! 4. copies rumqttd's packets back unchanged, and closes a CPE's connection when it is
//!    revoked or its password rotated.
//!
//! Memory per connection is one frame buffer (at most the packet limit, shrunk after a
//! large frame) and two small socket buffers; connections are capped.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Login, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::acl::{self, Identity};
use super::stats::STATS;
use crate::registry::{KeyCache, Login as LoginCheck};

/// How long a new connection has to send its CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most topic filters one CPE connection may subscribe (it needs three).
pub const MAX_CPE_SUBSCRIPTIONS: usize = 16;

/// A CPE's sustained upload rate through the gate, bytes per second.
pub const CPE_BYTES_PER_SEC: u64 = 64 * 1024;

/// A CPE's upload burst through the gate, bytes.
pub const CPE_BURST_BYTES: u64 = 512 * 1024;

/// Frame buffers above this capacity are released after use.
const KEEP_BUFFER_BYTES: usize = 4096;

/// Socket read buffers of the gate, each direction.
const IO_BUFFER_BYTES: usize = 2048;

/// What the gate needs to know.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// rumqttd's internal loopback address.
    pub upstream: SocketAddr,
    /// The password rumqttd admits; replaces every client's.
    pub upstream_secret: String,
    /// The controller's user name.
    pub controller_user: String,
    /// The controller's password (never empty).
    pub controller_password: String,
    /// Largest MQTT remaining length accepted from a client.
    pub max_packet_bytes: usize,
    /// Most simultaneous client connections.
    pub max_connections: usize,
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
        tokio::spawn(async move {
            if let Err(end) = serve(stream, &config, &keys, changed).await {
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
    #[error("credentials changed")]
    CredentialsChanged,
    #[error("upstream: {0}")]
    Upstream(std::io::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// How a frame read ended.
enum Frame {
    /// A whole frame is in the buffer; its first byte.
    Packet(u8),
    /// The peer closed between frames.
    Closed,
}

/// Reads one MQTT frame (fixed header, remaining length, body) into `buf`, refusing a
/// remaining length above `limit` before reading its body.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
    buf: &mut Vec<u8>,
) -> Result<Frame, End> {
    buf.clear();
    if buf.capacity() > KEEP_BUFFER_BYTES {
        buf.shrink_to(KEEP_BUFFER_BYTES);
    }
    let first = match r.read_u8().await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Frame::Closed),
        Err(e) => return Err(End::Io(e)),
    };
    buf.push(first);
    let mut len = 0usize;
    let mut shift = 0u32;
    loop {
        let b = r.read_u8().await?;
        buf.push(b);
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(End::Protocol("remaining length over four bytes"));
        }
    }
    if len > limit {
        return Err(End::TooLarge(len));
    }
    let start = buf.len();
    buf.resize(start + len, 0);
    if let Some(body) = buf.get_mut(start..) {
        r.read_exact(body).await?;
    }
    Ok(Frame::Packet(first))
}

/// The body of a frame: what follows the fixed header and remaining length.
fn body(frame: &[u8]) -> &[u8] {
    let mut i = 1;
    while frame.get(i).is_some_and(|b| b & 0x80 != 0) {
        i += 1;
    }
    frame.get(i + 1..).unwrap_or(&[])
}

/// An MQTT UTF-8 string at the start of `b` and the rest after it.
fn mqtt_str(b: &[u8]) -> Option<(&str, &[u8])> {
    let len = usize::from(u16::from_be_bytes([*b.first()?, *b.get(1)?]));
    let s = b.get(2..2 + len)?;
    Some((std::str::from_utf8(s).ok()?, b.get(2 + len..)?))
}

/// The topic filters of a SUBSCRIBE body.
fn subscribe_filters(body: &[u8]) -> Option<Vec<&str>> {
    let mut rest = body.get(2..)?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (filter, after) = mqtt_str(rest)?;
        out.push(filter);
        rest = after.get(1..)?;
    }
    (!out.is_empty()).then_some(out)
}

const CONNACK_BAD_LOGIN: [u8; 4] = [0x20, 0x02, 0x00, 0x04];
const CONNACK_NOT_AUTHORIZED: [u8; 4] = [0x20, 0x02, 0x00, 0x05];
const CONNACK_SERVER_UNAVAILABLE: [u8; 4] = [0x20, 0x02, 0x00, 0x03];

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

/// An admitted login: who, the password hash it used (a CPE's), and the CONNECT to send
/// upstream.
struct Admitted {
    identity: Identity,
    hash: Option<String>,
    connect: BytesMut,
}

/// A refused login: the counter label and the CONNACK to answer.
type Refusal = (&'static str, [u8; 4]);

/// Checks a CONNECT.
fn admit(frame: &[u8], config: &GateConfig, keys: &RwLock<KeyCache>) -> Result<Admitted, Refusal> {
    let mut bytes = BytesMut::from(frame);
    let Ok(Packet::Connect(mut connect)) = Packet::read(&mut bytes, config.max_packet_bytes + 8)
    else {
        return Err(("malformed", CONNACK_NOT_AUTHORIZED));
    };
    let Some(login) = connect.login.take() else {
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
    if let Some(will) = &connect.last_will {
        if !acl::may_will(&identity, &will.topic) {
            return Err(("will_denied", CONNACK_NOT_AUTHORIZED));
        }
    }
    connect.login = Some(Login::new(login.username, config.upstream_secret.clone()));
    let mut out = BytesMut::new();
    if connect.write(&mut out).is_err() {
        return Err(("malformed", CONNACK_NOT_AUTHORIZED));
    }
    Ok(Admitted {
        identity,
        hash,
        connect: out,
    })
}

async fn serve(
    client: TcpStream,
    config: &GateConfig,
    keys: &RwLock<KeyCache>,
    mut changed: watch::Receiver<u64>,
) -> Result<(), End> {
    let _ = client.set_nodelay(true);
    let (client_r, mut client_w) = client.into_split();
    let mut client_r = BufReader::with_capacity(IO_BUFFER_BYTES, client_r);
    let mut buf = Vec::new();
    let limit = config.max_packet_bytes;
    let first =
        match tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut client_r, limit, &mut buf))
            .await
        {
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
            Ok(Ok(Frame::Closed)) => return Ok(()),
            Ok(Ok(Frame::Packet(b))) => b,
        };
    if first >> 4 != 1 {
        STATS.logins_refused.add("malformed");
        return Err(End::Protocol("first packet is not CONNECT"));
    }
    let Admitted {
        identity,
        hash,
        connect,
    } = match admit(&buf, config, keys) {
        Ok(a) => a,
        Err((reason, connack)) => {
            STATS.logins_refused.add(reason);
            let _ = client_w.write_all(&connack).await;
            let _ = client_w.shutdown().await;
            return Err(End::Refused(reason));
        }
    };
    let unreachable = |e| {
        STATS.sessions_ended.add("upstream_unreachable");
        End::Upstream(e)
    };
    let upstream = TcpStream::connect(config.upstream)
        .await
        .map_err(unreachable)?;
    let _ = upstream.set_nodelay(true);
    let (up_r, mut up_w) = upstream.into_split();
    up_w.write_all(&connect).await.map_err(unreachable)?;
    changed.borrow_and_update();

    let downstream = async {
        let mut up_r = BufReader::with_capacity(IO_BUFFER_BYTES, up_r);
        tokio::io::copy_buf(&mut up_r, &mut client_w).await?;
        STATS.sessions_ended.add("broker_closed");
        Ok::<(), End>(())
    };
    let upstream = async {
        let mut bucket = Bucket::new();
        let mut subscriptions = 0usize;
        loop {
            let first = match read_frame(&mut client_r, limit, &mut buf).await {
                Ok(Frame::Packet(b)) => b,
                Ok(Frame::Closed) => return Ok(()),
                Err(End::TooLarge(n)) => {
                    STATS.dropped.add("payload_size_limit_exceeded");
                    return Err(End::TooLarge(n));
                }
                Err(e) => return Err(e),
            };
            check(&identity, first, &buf, &mut subscriptions)?;
            if matches!(identity, Identity::Cpe(_)) {
                let wait = bucket.take(buf.len());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            up_w.write_all(&buf).await.map_err(End::Upstream)?;
        }
    };
    let revoked = async {
        let Identity::Cpe(id) = &identity else {
            return std::future::pending::<End>().await;
        };
        while changed.changed().await.is_ok() {
            let current = keys
                .read()
                .ok()
                .and_then(|k| k.password_hash(id).map(str::to_owned));
            if current.is_none() || current != hash {
                STATS.sessions_ended.add("credentials_changed");
                return End::CredentialsChanged;
            }
        }
        std::future::pending::<End>().await
    };
    // What the client already sent is judged before the broker's end of the session is
    // noticed, so a refused packet is counted as such even when both arrive together.
    tokio::select! {
        biased;
        r = upstream => r,
        r = downstream => r,
        e = revoked => Err(e),
    }
}

/// Checks one client packet against the ACL; counts and refuses a violation.
fn check(
    identity: &Identity,
    first: u8,
    frame: &[u8],
    subscriptions: &mut usize,
) -> Result<(), End> {
    let violation = |what: &'static str| {
        STATS.dropped.add("protocol_violation");
        End::Protocol(what)
    };
    match first >> 4 {
        1 => Err(violation("second CONNECT")),
        3 => {
            let Some((topic, _)) = mqtt_str(body(frame)) else {
                return Err(violation("malformed PUBLISH"));
            };
            if acl::may_publish(identity, topic, first & 1 == 1) {
                Ok(())
            } else {
                STATS.acl_denied.add("publish");
                Err(End::Denied(format!("publish to {topic:?}")))
            }
        }
        8 => {
            let Some(filters) = subscribe_filters(body(frame)) else {
                return Err(violation("malformed SUBSCRIBE"));
            };
            for f in &filters {
                if !acl::may_subscribe(identity, f) {
                    STATS.acl_denied.add("subscribe");
                    return Err(End::Denied(format!("subscribe to {f:?}")));
                }
            }
            *subscriptions += filters.len();
            if matches!(identity, Identity::Cpe(_)) && *subscriptions > MAX_CPE_SUBSCRIPTIONS {
                STATS.acl_denied.add("subscription_limit");
                return Err(End::Denied("too many subscriptions".into()));
            }
            Ok(())
        }
        0 | 15 => Err(violation("reserved packet type")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_bounded_before_buffering() {
        let mut buf = Vec::new();
        // PINGREQ
        let mut r: &[u8] = &[0xc0, 0x00];
        assert!(matches!(
            read_frame(&mut r, 10, &mut buf).await,
            Ok(Frame::Packet(0xc0))
        ));
        // Remaining length 200 > limit 100: refused before the body is read.
        let mut r: &[u8] = &[0x30, 0xc8, 0x01];
        assert!(matches!(
            read_frame(&mut r, 100, &mut buf).await,
            Err(End::TooLarge(200))
        ));
        // Five length bytes.
        let mut r: &[u8] = &[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(matches!(
            read_frame(&mut r, usize::MAX, &mut buf).await,
            Err(End::Protocol(_))
        ));
        let mut r: &[u8] = &[];
        assert!(matches!(
            read_frame(&mut r, 10, &mut buf).await,
            Ok(Frame::Closed)
        ));
    }

    #[test]
    fn subscribe_and_publish_are_checked() {
        let cpe = Identity::Cpe("a".into());
        let mut subs = 0;
        // SUBSCRIBE pkid 1, "#" qos 1
        let frame = [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x01];
        assert_eq!(subscribe_filters(body(&frame)), Some(vec!["#"]));
        assert!(matches!(
            check(&cpe, 0x82, &frame, &mut subs),
            Err(End::Denied(_))
        ));
        assert!(check(&Identity::Controller, 0x82, &frame, &mut subs).is_ok());
        // PUBLISH qos0 to "x"
        let frame = [0x30, 0x04, 0x00, 0x01, b'x', b'!'];
        assert!(matches!(
            check(&cpe, 0x30, &frame, &mut subs),
            Err(End::Denied(_))
        ));
        let truncated = [0x30, 0x02, 0x00, 0x09];
        assert!(matches!(
            check(&cpe, 0x30, &truncated, &mut subs),
            Err(End::Protocol(_))
        ));
    }
}
