//! Live capture on the LAN interface: an `AF_PACKET` socket with the kernel-side filter of
//! [`filter`] attached before it is bound, read through `pnet_datalink`.
//!
//! # Data flow
//! [`Capture::open`] creates the socket with protocol 0 (it receives nothing yet), attaches
//! the BPF program with `SO_ATTACH_FILTER`, then hands the descriptor to `pnet_datalink`,
//! which binds it to the interface for all protocols. So no unfiltered frame is ever queued.
//! [`Capture::next_frame`] waits up to the poll interval and returns one [`Frame`] stamped
//! with the wall clock in Unix milliseconds (the engine's time). [`Capture::stats`] reads the
//! kernel's `PACKET_STATISTICS` (frames that passed the filter, frames dropped because the
//! socket queue was full) and keeps running totals, since the kernel resets them on each read.
//!
//! Frames in both directions are captured (the bridge sees LAN clients' requests coming in
//! and servers' replies going out); the engine tells them apart by the router's MACs.

pub mod filter;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pnet_datalink::{Channel, DataLinkReceiver};

use crate::ports::MailPorts;

/// One captured frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// When it was read, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The Ethernet frame, from the destination MAC on.
    pub data: &'a [u8],
}

/// Kernel counters of the capture socket since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Frames that passed the filter, including those dropped.
    pub packets: u64,
    /// Frames that passed the filter but were dropped because the socket's queue was full.
    pub drops: u64,
}

/// How to open a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureOptions {
    /// Longest wait in [`Capture::next_frame`] before it returns `None`, so the caller can
    /// run timers and notice shutdown.
    pub poll_interval: Duration,
    /// Size of the socket's receive queue (`SO_RCVBUF`); the kernel caps it at
    /// `net.core.rmem_max`.
    pub receive_buffer_bytes: usize,
    /// Whether to put the interface into promiscuous mode. Not needed on a router, which
    /// sees every frame it forwards; useful on a mirror port.
    pub promiscuous: bool,
    /// The mail ports the kernel filter passes (the agent's one set, `enforce.mail_ports`).
    pub mail_ports: MailPorts,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            poll_interval: Duration::from_millis(250),
            receive_buffer_bytes: 1 << 20,
            promiscuous: false,
            mail_ports: MailPorts::default(),
        }
    }
}

/// Largest frame read whole: a 64 KiB GRO aggregate plus link headers. Longer frames are
/// truncated to this, which the engine sees as a short capture.
const READ_BUFFER_BYTES: usize = 65_536 + 256;

/// The capture could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// No interface of that name exists.
    #[error("no network interface named `{0}`")]
    NoInterface(String),
    /// The packet socket could not be created (needs `CAP_NET_RAW`).
    #[error("cannot create a packet socket (needs root or CAP_NET_RAW): {0}")]
    Socket(#[source] io::Error),
    /// A socket option could not be set.
    #[error("cannot set {option} on the packet socket: {source}")]
    SocketOption {
        /// Which option.
        option: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The filter program is malformed (a defect, caught by unit tests).
    #[error(transparent)]
    Filter(#[from] filter::FilterError),
    /// Binding the socket to the interface failed.
    #[error("cannot capture on `{interface}`: {source}")]
    Bind {
        /// The interface.
        interface: String,
        /// Why.
        source: io::Error,
    },
    /// `pnet_datalink` returned a channel that is not Ethernet.
    #[error("`{0}` is not an Ethernet interface")]
    NotEthernet(String),
    /// Reading a frame failed.
    #[error("capture read failed: {0}")]
    Read(#[source] io::Error),
    /// Reading the kernel's counters failed.
    #[error("cannot read capture statistics: {0}")]
    Stats(#[source] io::Error),
}

/// A live capture on one interface.
pub struct Capture {
    rx: Box<dyn DataLinkReceiver>,
    /// The socket, owned by `rx`; used here only for `getsockopt`.
    fd: RawFd,
    totals: CaptureStats,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("fd", &self.fd)
            .field("totals", &self.totals)
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// Opens a filtered capture on `interface`.
    ///
    /// # Errors
    /// [`CaptureError`] when the interface does not exist, the process lacks
    /// `CAP_NET_RAW`, or a socket call fails.
    pub fn open(interface: &str, options: &CaptureOptions) -> Result<Capture, CaptureError> {
        let iface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == interface)
            .ok_or_else(|| CaptureError::NoInterface(interface.to_owned()))?;
        let socket = filtered_socket(options.receive_buffer_bytes, &options.mail_ports)?;
        let fd = socket.as_raw_fd();
        let config = pnet_datalink::Config {
            read_buffer_size: READ_BUFFER_BYTES,
            read_timeout: Some(options.poll_interval),
            promiscuous: options.promiscuous,
            // pnet binds it (for all protocols), owns it from here and closes it on drop.
            socket_fd: Some(socket.into_raw_fd()),
            ..pnet_datalink::Config::default()
        };
        let rx = match pnet_datalink::channel(&iface, config) {
            Ok(Channel::Ethernet(_tx, rx)) => rx,
            Ok(_) => return Err(CaptureError::NotEthernet(interface.to_owned())),
            Err(source) => {
                return Err(CaptureError::Bind {
                    interface: interface.to_owned(),
                    source,
                })
            }
        };
        tracing::info!(interface, "capture open");
        Ok(Capture {
            rx,
            fd,
            totals: CaptureStats::default(),
        })
    }

    /// The next frame, or `None` when none arrived within the poll interval (or the wait
    /// was interrupted by a signal).
    ///
    /// # Errors
    /// [`CaptureError::Read`] when the socket fails (e.g. the interface went away).
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, CaptureError> {
        match self.rx.next() {
            Ok(data) => Ok(Some(Frame {
                ts_ms: unix_ms(SystemTime::now()),
                data,
            })),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(CaptureError::Read(e)),
        }
    }

    /// Kernel counters since the capture was opened.
    ///
    /// # Errors
    /// [`CaptureError::Stats`] when `getsockopt` fails.
    pub fn stats(&mut self) -> Result<CaptureStats, CaptureError> {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = socklen_of::<libc::tpacket_stats>();
        // SAFETY: `fd` is the open packet socket owned by `self.rx` (alive as long as
        // `self`); `st` and `len` are valid for writes and `len` holds the size of `st`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd,
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(CaptureError::Stats(io::Error::last_os_error()));
        }
        // The kernel resets its counters on every read; keep the totals here.
        self.totals.packets += u64::from(st.tp_packets);
        self.totals.drops += u64::from(st.tp_drops);
        Ok(self.totals)
    }
}

/// Milliseconds since the Unix epoch (0 for a clock set before it).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn socklen_of<T>() -> libc::socklen_t {
    // Socket option structs are a few bytes; this cannot truncate.
    std::mem::size_of::<T>() as libc::socklen_t
}

/// A packet socket that receives nothing until bound, with the filter already attached.
fn filtered_socket(
    receive_buffer_bytes: usize,
    mail_ports: &MailPorts,
) -> Result<OwnedFd, CaptureError> {
    // SAFETY: plain system call with constant arguments; the result is checked below.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(CaptureError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };

    let mut insns: Vec<libc::sock_filter> = filter::program(mail_ports)?
        .into_iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let prog = libc::sock_fprog {
        // `program()` guarantees fewer than 4096 instructions.
        len: insns.len() as libc::c_ushort,
        filter: insns.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `insns`, which outlives the call; the kernel copies the
    // program and keeps no pointer to it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            socklen_of::<libc::sock_fprog>(),
        )
    };
    if rc != 0 {
        return Err(CaptureError::SocketOption {
            option: "SO_ATTACH_FILTER",
            source: io::Error::last_os_error(),
        });
    }

    let size = libc::c_int::try_from(receive_buffer_bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `size` is a valid c_int for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            socklen_of::<libc::c_int>(),
        )
    };
    if rc != 0 {
        return Err(CaptureError::SocketOption {
            option: "SO_RCVBUF",
            source: io::Error::last_os_error(),
        });
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_unix_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(unix_ms(t), 1_700_000_000_123);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }

    #[test]
    fn a_missing_interface_is_named_in_the_error() {
        let err = Capture::open("sg-no-such0", &CaptureOptions::default()).unwrap_err();
        assert!(err.to_string().contains("sg-no-such0"), "{err}");
    }
}
