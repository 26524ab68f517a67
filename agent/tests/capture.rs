//! Live capture in network namespaces: the kernel filter passes mail, DNS and DHCP frames
//! and nothing else.
//!
//! Two namespaces joined by a veth pair: `A` holds the capture and the servers, `B` the
//! clients. Needs root (CI runs as root) and iproute2. The namespaces are deleted when the
//! test ends, also when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use smtpguard_agent::capture::{Capture, CaptureOptions};

const A_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const B_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const A_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
const B_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
use smtpguard_agent::ports::DEFAULT_MAIL_PORTS as MAIL_PORTS;
/// Bounds on the capture loop: it normally ends at the sentinel query.
const MAX_FRAMES: usize = 10_000;
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Two namespaces and a veth pair, deleted on drop.
struct Namespaces {
    a: String,
    b: String,
    veth_a: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run `ip` (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Namespaces {
    fn create() -> Namespaces {
        assert_eq!(
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() },
            0,
            "this test creates network namespaces and needs root"
        );
        let id = std::process::id();
        let ns = Namespaces {
            a: format!("sgcap-{id}-a"),
            b: format!("sgcap-{id}-b"),
            veth_a: format!("sgc{id}a"),
        };
        let veth_b = format!("sgc{id}b");
        ip(&["netns", "add", &ns.a]);
        ip(&["netns", "add", &ns.b]);
        ip(&[
            "link", "add", &ns.veth_a, "netns", &ns.a, "type", "veth", "peer", "name", &veth_b,
            "netns", &ns.b,
        ]);
        for (name, dev, v4, v6) in [
            (&ns.a, &ns.veth_a, A_V4, A_V6),
            (&ns.b, &veth_b, B_V4, B_V6),
        ] {
            ip(&["-n", name, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ip(&[
                "-n",
                name,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
            ip(&["-n", name, "link", "set", dev, "up"]);
        }
        ns
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Moves the calling thread into a named network namespace.
fn enter(ns: &str) {
    let file = File::open(format!("/run/netns/{ns}")).unwrap();
    // SAFETY: `file` is an open namespace file for the duration of the call; setns only
    // changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// A minimal DNS query for `name`, type A.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A server for one connection: greets, reads one line and answers.
fn serve_tcp(listener: TcpListener, greeting: &'static [u8], answer: &'static [u8]) {
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if !greeting.is_empty() {
        conn.write_all(greeting).unwrap();
    }
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line).unwrap();
    conn.write_all(answer).unwrap();
}

/// A client dialogue: read the greeting if any, send one line, read the answer.
fn talk(addr: SocketAddr, greeting: bool, line: &[u8]) -> String {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut seen = String::new();
    if greeting {
        reader.read_line(&mut seen).unwrap();
    }
    conn.write_all(line).unwrap();
    reader.read_line(&mut seen).unwrap();
    seen
}

/// What the test checks about one captured frame.
#[derive(Debug)]
struct Seen {
    v6: bool,
    udp: bool,
    src_port: u16,
    dst_port: u16,
    syn: bool,
    ack: bool,
    fin_or_rst: bool,
    payload: Vec<u8>,
}

fn dissect(frame: &[u8]) -> Seen {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let v6 = matches!(p.net, Some(NetSlice::Ipv6(_)));
    match p.transport {
        Some(TransportSlice::Tcp(t)) => Seen {
            v6,
            udp: false,
            src_port: t.source_port(),
            dst_port: t.destination_port(),
            syn: t.syn(),
            ack: t.ack(),
            fin_or_rst: t.fin() || t.rst(),
            payload: t.payload().to_vec(),
        },
        Some(TransportSlice::Udp(u)) => Seen {
            v6,
            udp: true,
            src_port: u.source_port(),
            dst_port: u.destination_port(),
            syn: false,
            ack: false,
            fin_or_rst: false,
            payload: u.payload().to_vec(),
        },
        other => panic!("captured a frame that is neither TCP nor UDP: {other:?}"),
    }
}

#[test]
fn kernel_filter_passes_only_mail_dns_and_dhcp() {
    let ns = Namespaces::create();
    let sentinel = dns_query(0x5eed, "capture-done.test");
    let (ready_tx, ready_rx) = mpsc::channel();

    let (frames, stats, dialogues) = std::thread::scope(|s| {
        // Namespace A: servers, then the capture.
        let capture = s.spawn(|| {
            enter(&ns.a);
            for (ip, port, greeting, answer) in [
                (
                    IpAddr::V4(A_V4),
                    25,
                    &b"220 mx.test ESMTP\r\n"[..],
                    &b"250 mx.test\r\n"[..],
                ),
                (
                    IpAddr::V6(A_V6),
                    25,
                    b"220 mx.test ESMTP\r\n",
                    b"250 mx.test\r\n",
                ),
                (IpAddr::V4(A_V4), 80, b"", b"HTTP/1.0 204 No Content\r\n"),
                (IpAddr::V6(A_V6), 80, b"", b"HTTP/1.0 204 No Content\r\n"),
            ] {
                let listener = TcpListener::bind((ip, port)).unwrap();
                s.spawn(move || serve_tcp(listener, greeting, answer));
            }
            let dns = UdpSocket::bind((A_V4, 53)).unwrap();
            s.spawn(move || {
                let mut buf = [0u8; 512];
                for _ in 0..2 {
                    let (n, from) = dns.recv_from(&mut buf).unwrap();
                    buf[2] |= 0x80; // QR: a response
                    dns.send_to(&buf[..n], from).unwrap();
                }
            });

            let mut capture = Capture::open(&ns.veth_a, &CaptureOptions::default()).unwrap();
            ready_tx.send(()).unwrap();
            let start = Instant::now();
            let mut frames = Vec::new();
            while frames.len() < MAX_FRAMES && start.elapsed() < MAX_WAIT {
                let Some(frame) = capture.next_frame().unwrap() else {
                    continue;
                };
                assert!(frame.ts_ms > 1_600_000_000_000, "timestamp in Unix ms");
                let done = frame.data.ends_with(&sentinel);
                frames.push(frame.data.to_vec());
                if done {
                    break;
                }
            }
            (frames, capture.stats().unwrap())
        });

        // Namespace B: the clients, once the capture is open.
        let (ns, sentinel) = (&ns, &sentinel);
        let clients = s.spawn(move || {
            enter(&ns.b);
            ready_rx.recv().unwrap();
            let mut dialogues = Vec::new();
            for ip in [IpAddr::V4(A_V4), IpAddr::V6(A_V6)] {
                dialogues.push(talk((ip, 25).into(), true, b"EHLO client.test\r\n"));
                dialogues.push(talk((ip, 80).into(), false, b"GET / HTTP/1.0\r\n"));
            }
            let udp = UdpSocket::bind((B_V4, 0)).unwrap();
            udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            udp.send_to(&dns_query(0x0101, "mx.example.test"), (A_V4, 53))
                .unwrap();
            let mut buf = [0u8; 512];
            let (n, _) = udp.recv_from(&mut buf).unwrap();
            assert!(n > 12 && buf[2] & 0x80 != 0, "DNS answer received");
            udp.send_to(b"not mail, not dns", (A_V4, 9999)).unwrap();
            let dhcp = UdpSocket::bind((B_V4, 68)).unwrap();
            dhcp.send_to(b"dhcp request stand-in", (A_V4, 67)).unwrap();
            // Give the kernel a moment to queue the frames above before the sentinel, so
            // that nothing is still in flight when the capture stops.
            std::thread::sleep(Duration::from_millis(200));
            udp.send_to(sentinel, (A_V4, 53)).unwrap();
            let _ = udp.recv_from(&mut buf);
            dialogues
        });
        let dialogues = clients.join().unwrap();
        let (frames, stats) = capture.join().unwrap();
        (frames, stats, dialogues)
    });

    // The port-80 dialogues really happened, so their frames were on the wire.
    assert_eq!(dialogues.iter().filter(|d| d.contains("204")).count(), 2);
    assert_eq!(dialogues.iter().filter(|d| d.contains("250 mx")).count(), 2);

    let seen: Vec<Seen> = frames.iter().map(|f| dissect(f)).collect();
    assert!(
        seen.last().is_some_and(|s| s.payload == sentinel),
        "the capture saw the sentinel query"
    );
    for s in &seen {
        let mail = !s.udp && (MAIL_PORTS.contains(&s.dst_port) || MAIL_PORTS.contains(&s.src_port));
        let dns_dhcp = s.udp && (s.src_port == 53 || s.dst_port == 53 || s.dst_port == 67);
        assert!(
            mail || dns_dhcp,
            "unexpected frame passed the filter: {s:?}"
        );
        assert!(
            !mail || s.syn || s.fin_or_rst || !s.payload.is_empty(),
            "pure ACK passed the filter: {s:?}"
        );
    }
    assert!(!seen.iter().any(|s| s.src_port == 80 || s.dst_port == 80));
    assert!(!seen.iter().any(|s| s.dst_port == 9999));

    for v6 in [false, true] {
        let on = |f: &dyn Fn(&Seen) -> bool| seen.iter().any(|s| s.v6 == v6 && f(s));
        assert!(
            on(&|s| s.dst_port == 25 && s.syn && !s.ack),
            "SYN to 25 (v6={v6})"
        );
        assert!(
            on(&|s| s.src_port == 25 && s.syn && s.ack),
            "SYN-ACK from 25 (v6={v6})"
        );
        assert!(
            on(&|s| s.dst_port == 25 && s.payload.starts_with(b"EHLO")),
            "EHLO (v6={v6})"
        );
        assert!(
            on(&|s| s.src_port == 25 && s.payload.starts_with(b"220")),
            "banner (v6={v6})"
        );
        assert!(
            on(&|s| s.src_port == 25 && s.payload.starts_with(b"250")),
            "reply (v6={v6})"
        );
    }
    assert!(seen
        .iter()
        .any(|s| s.udp && s.dst_port == 53 && s.payload.len() > 12));
    assert!(seen.iter().any(|s| s.udp && s.src_port == 53));
    assert!(seen.iter().any(|s| s.udp && s.dst_port == 67));
    assert!(
        stats.packets >= seen.len() as u64,
        "{stats:?} vs {}",
        seen.len()
    );
    assert_eq!(stats.drops, 0);
    drop(ns);
}

/// Opening a capture where there is no such interface is an error naming it, not a panic.
#[test]
fn missing_interface_is_a_clear_error() {
    let err = Capture::open("sg-absent0", &CaptureOptions::default()).unwrap_err();
    assert!(err.to_string().contains("sg-absent0"), "{err}");
}
