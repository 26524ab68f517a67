//! The classic BPF program attached to the capture socket, so the kernel hands user space
//! only the frames the engine looks at.
//!
//! # What passes
//! Ethernet frames, untagged or with one in-band 802.1Q tag (a tag the NIC strips into
//! metadata is invisible to the filter and the frame looks untagged, which is also handled),
//! carrying IPv4 or IPv6 with TCP or UDP directly after the IP header:
//!
//! | traffic | passes when |
//! |---|---|
//! | TCP to a mail port (the configured set, [`crate::ports`]; by default 25, 465, 587, 2525) | SYN, FIN or RST set, or the segment carries payload (the client's dialogue) |
//! | TCP from a mail port | SYN, FIN or RST set (SYN-ACKs and resets, so the engine can tell answered from unanswered SYNs) |
//! | TCP from port 25 | additionally any segment with payload (the server's replies; the engine keeps what it needs, the first replies of each session) |
//! | UDP from or to port 53 | always (DNS queries and answers) |
//! | UDP to port 67 | always (DHCP client requests, for host names) |
//!
//! Everything else is dropped in the kernel: pure ACKs, other ports, ICMP, ARP, non-first IPv4
//! fragments (they carry no ports), IPv6 with extension headers before TCP/UDP, and server
//! payload on the other mail ports (encrypted or authenticated submission, nothing the engine reads).
//!
//! # How it is written
//! A tiny assembler with named labels ([`Asm`]) builds the instruction array once; all jumps
//! are forward, as classic BPF requires, and [`program`] checks every offset fits its field.
//! Register X holds the offset of the layer being read (relative to the untagged Ethernet
//! header), so one program body serves tagged and untagged frames. Scratch memory:
//!
//! | slot | holds |
//! |---|---|
//! | `M[1]` | IP protocol / IPv6 next header |
//! | `M[2]` | offset of the TCP/UDP header minus 14 |
//! | `M[3]` | length of the TCP/UDP segment (header + payload) |
//! | `M[4]` | IPv4 header length, then TCP header length |
//! | `M[5]` | TCP payload length |

use crate::ports::MailPorts;

/// Bytes of each accepted frame handed to user space (the whole frame in practice).
pub const SNAP_LEN: u32 = 0x0004_0000;

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Instruction {
    /// Operation code.
    pub code: u16,
    /// Jump offset when the condition holds.
    pub jt: u8,
    /// Jump offset when it does not.
    pub jf: u8,
    /// Constant operand.
    pub k: u32,
}

// Opcode parts, from linux/filter.h (uapi, stable).
pub(crate) const LD: u16 = 0x00;
pub(crate) const LDX: u16 = 0x01;
pub(crate) const ST: u16 = 0x02;
#[cfg(test)]
pub(crate) const STX: u16 = 0x03;
pub(crate) const ALU: u16 = 0x04;
pub(crate) const JMP: u16 = 0x05;
pub(crate) const RET: u16 = 0x06;
pub(crate) const MISC: u16 = 0x07;
pub(crate) const W: u16 = 0x00;
pub(crate) const H: u16 = 0x08;
pub(crate) const B: u16 = 0x10;
pub(crate) const IMM: u16 = 0x00;
pub(crate) const ABS: u16 = 0x20;
pub(crate) const IND: u16 = 0x40;
pub(crate) const MEM: u16 = 0x60;
pub(crate) const ADD: u16 = 0x00;
pub(crate) const SUB: u16 = 0x10;
pub(crate) const LSH: u16 = 0x60;
pub(crate) const RSH: u16 = 0x70;
pub(crate) const AND: u16 = 0x50;
pub(crate) const JA: u16 = 0x00;
pub(crate) const JEQ: u16 = 0x10;
pub(crate) const JGT: u16 = 0x20;
pub(crate) const JSET: u16 = 0x40;
pub(crate) const K: u16 = 0x00;
pub(crate) const X: u16 = 0x08;
pub(crate) const TAX: u16 = 0x00;
pub(crate) const TXA: u16 = 0x80;

/// Where a conditional jump goes.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The next instruction.
    Next,
    /// A named label further down.
    Label(&'static str),
}

/// An instruction before labels are resolved.
#[derive(Debug, Clone, Copy)]
enum Item {
    Label(&'static str),
    Op {
        code: u16,
        k: u32,
        jt: Target,
        jf: Target,
    },
    Always(&'static str),
}

/// Builds a program with named forward labels.
#[derive(Debug, Default)]
struct Asm {
    items: Vec<Item>,
}

/// The program could not be assembled (a defect of this file, caught by its unit tests).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A jump names a label that is not defined after it.
    #[error("BPF label `{0}` is not defined after its jump")]
    Label(&'static str),
    /// A conditional jump is longer than 255 instructions.
    #[error("BPF jump to `{0}` is too far")]
    TooFar(&'static str),
    /// The program is longer than the kernel accepts.
    #[error("BPF program has {0} instructions")]
    TooLong(usize),
}

impl Asm {
    fn op(&mut self, code: u16, k: u32) -> &mut Self {
        self.items.push(Item::Op {
            code,
            k,
            jt: Target::Next,
            jf: Target::Next,
        });
        self
    }

    /// `if (A <cond> k) goto yes;` else fall through.
    fn jump_if(&mut self, cond: u16, k: u32, yes: &'static str) -> &mut Self {
        self.items.push(Item::Op {
            code: JMP | cond | K,
            k,
            jt: Target::Label(yes),
            jf: Target::Next,
        });
        self
    }

    fn goto(&mut self, label: &'static str) -> &mut Self {
        self.items.push(Item::Always(label));
        self
    }

    fn label(&mut self, name: &'static str) -> &mut Self {
        self.items.push(Item::Label(name));
        self
    }

    fn finish(&self) -> Result<Vec<Instruction>, FilterError> {
        // Index every label by the instruction that follows it.
        let mut labels: Vec<(&'static str, usize)> = Vec::new();
        let mut n = 0usize;
        for item in &self.items {
            match item {
                Item::Label(name) => labels.push((name, n)),
                Item::Op { .. } | Item::Always(_) => n += 1,
            }
        }
        if n > usize::from(u16::MAX) || n > 4096 {
            return Err(FilterError::TooLong(n));
        }
        let find = |name: &'static str, from: usize| -> Result<usize, FilterError> {
            labels
                .iter()
                .find(|(l, at)| *l == name && *at > from)
                .map(|(_, at)| at - from - 1)
                .ok_or(FilterError::Label(name))
        };
        let mut out = Vec::with_capacity(n);
        for item in &self.items {
            let here = out.len();
            match *item {
                Item::Label(_) => {}
                Item::Op { code, k, jt, jf } => {
                    let rel = |t: Target| -> Result<u8, FilterError> {
                        match t {
                            Target::Next => Ok(0),
                            Target::Label(l) => {
                                u8::try_from(find(l, here)?).map_err(|_| FilterError::TooFar(l))
                            }
                        }
                    };
                    out.push(Instruction {
                        code,
                        jt: rel(jt)?,
                        jf: rel(jf)?,
                        k,
                    });
                }
                Item::Always(l) => {
                    let k = u32::try_from(find(l, here)?).map_err(|_| FilterError::TooFar(l))?;
                    out.push(Instruction {
                        code: JMP | JA,
                        jt: 0,
                        jf: 0,
                        k,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// Ethernet header length without a tag; every load below is `[X + ETH + field]`.
const ETH: u32 = 14;
const ETHERTYPE_VLAN: u32 = 0x8100;
const ETHERTYPE_IPV4: u32 = 0x0800;
const ETHERTYPE_IPV6: u32 = 0x86dd;
const PROTO_TCP: u32 = 6;
const PROTO_UDP: u32 = 17;
/// TCP FIN | SYN | RST.
const TCP_FIN_SYN_RST: u32 = 0x07;

/// The capture filter as a kernel-ready instruction array.
///
/// # Errors
/// [`FilterError`] only if this file's program is malformed (covered by unit tests).
pub fn program(mail_ports: &MailPorts) -> Result<Vec<Instruction>, FilterError> {
    let mut a = Asm::default();
    // Layer 2: X = length of an in-band 802.1Q tag (0 or 4), A = the inner ethertype.
    a.op(LD | H | ABS, 12)
        .jump_if(JEQ, ETHERTYPE_VLAN, "vlan")
        .op(LDX | W | IMM, 0)
        .goto("l3")
        .label("vlan")
        .op(LDX | W | IMM, 4)
        .op(LD | H | ABS, 16)
        .label("l3")
        .jump_if(JEQ, ETHERTYPE_IPV4, "ipv4")
        .jump_if(JEQ, ETHERTYPE_IPV6, "ipv6")
        .goto("drop");

    // IPv4: skip non-first fragments; remember protocol, L4 offset and L4 length.
    a.label("ipv4")
        .op(LD | H | IND, ETH + 6) // flags + fragment offset
        .jump_if(JSET, 0x1fff, "drop")
        .op(LD | B | IND, ETH + 9) // protocol
        .op(ST, 1)
        .op(LD | H | IND, ETH + 2) // total length
        .op(ST, 3)
        .op(LD | B | IND, ETH) // version + IHL
        .op(ALU | AND | K, 0x0f)
        .op(ALU | LSH | K, 2) // header length in bytes
        .op(ST, 4)
        .op(ALU | ADD | X, 0) // + tag length
        .op(ST, 2)
        .op(LDX | W | MEM, 4)
        .op(LD | W | MEM, 3)
        .op(ALU | SUB | X, 0) // total length - header length
        .op(ST, 3)
        .op(LDX | W | MEM, 2)
        .goto("l4");

    // IPv6: only TCP/UDP directly after the fixed 40-byte header.
    a.label("ipv6")
        .op(LD | B | IND, ETH + 6) // next header
        .op(ST, 1)
        .op(LD | H | IND, ETH + 4) // payload length
        .op(ST, 3)
        .op(MISC | TXA, 0)
        .op(ALU | ADD | K, 40)
        .op(ST, 2)
        .op(MISC | TAX, 0);

    // Layer 4, X = offset of the TCP/UDP header minus 14.
    a.label("l4")
        .op(LD | W | MEM, 1)
        .jump_if(JEQ, PROTO_TCP, "tcp")
        .jump_if(JEQ, PROTO_UDP, "udp")
        .goto("drop");

    a.label("udp")
        .op(LD | H | IND, ETH) // source port
        .jump_if(JEQ, 53, "accept")
        .op(LD | H | IND, ETH + 2) // destination port
        .jump_if(JEQ, 53, "accept")
        .jump_if(JEQ, 67, "accept")
        .goto("drop");

    a.label("tcp")
        .op(LD | B | IND, ETH + 12) // data offset << 4
        .op(ALU | AND | K, 0xf0)
        .op(ALU | RSH | K, 2) // TCP header length in bytes
        .op(ST, 4)
        .op(LDX | W | MEM, 4)
        .op(LD | W | MEM, 3)
        .op(ALU | SUB | X, 0) // payload length
        .op(ST, 5)
        .op(LDX | W | MEM, 2)
        .op(LD | H | IND, ETH + 2); // destination port
    for &port in mail_ports.as_slice() {
        a.jump_if(JEQ, u32::from(port), "to_mail");
    }
    a.op(LD | H | IND, ETH); // source port
    a.jump_if(JEQ, 25, "from_25");
    for &port in mail_ports.as_slice() {
        a.jump_if(JEQ, u32::from(port), "from_mail");
    }
    a.goto("drop");

    // Client to server: connection control or payload.
    a.label("to_mail")
        .op(LD | B | IND, ETH + 13) // flags
        .jump_if(JSET, TCP_FIN_SYN_RST, "accept")
        .op(LD | W | MEM, 5)
        .jump_if(JGT, 0, "accept")
        .goto("drop");

    // Server to client on port 25: replies with payload, then as any mail port.
    a.label("from_25")
        .op(LD | W | MEM, 5)
        .jump_if(JGT, 0, "accept");
    a.label("from_mail")
        .op(LD | B | IND, ETH + 13) // flags
        .jump_if(JSET, TCP_FIN_SYN_RST, "accept");

    a.label("drop").op(RET | K, 0);
    a.label("accept").op(RET | K, SNAP_LEN);
    a.finish()
}

#[cfg(test)]
pub(crate) mod interpreter {
    //! A classic BPF interpreter for the instructions [`super::program`] uses, so the
    //! filter's decisions can be tested on crafted frames without a kernel.

    use super::*;

    /// Runs `prog` over `frame` like the kernel does: the return value is how many bytes
    /// to keep, 0 meaning drop; a load past the end of the frame drops it.
    pub(crate) fn run(prog: &[Instruction], frame: &[u8]) -> u32 {
        let (mut a, mut x) = (0u32, 0u32);
        let mut mem = [0u32; 16];
        let mut pc = 0usize;
        let load = |off: u32, size: u16| -> Option<u32> {
            let off = off as usize;
            let n = match size {
                W => 4,
                H => 2,
                _ => 1,
            };
            let bytes = frame.get(off..off + n)?;
            Some(bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
        };
        while let Some(ins) = prog.get(pc) {
            pc += 1;
            let class = ins.code & 0x07;
            let size = ins.code & 0x18;
            let mode = ins.code & 0xe0;
            let src = if ins.code & X != 0 { x } else { ins.k };
            match class {
                LD => {
                    a = match mode {
                        ABS => match load(ins.k, size) {
                            Some(v) => v,
                            None => return 0,
                        },
                        IND => match load(x.wrapping_add(ins.k), size) {
                            Some(v) => v,
                            None => return 0,
                        },
                        MEM => mem[ins.k as usize],
                        IMM => ins.k,
                        _ => panic!("unsupported load {:#x}", ins.code),
                    }
                }
                LDX => {
                    x = match mode {
                        IMM => ins.k,
                        MEM => mem[ins.k as usize],
                        _ => panic!("unsupported ldx {:#x}", ins.code),
                    }
                }
                ST => mem[ins.k as usize] = a,
                STX => mem[ins.k as usize] = x,
                ALU => {
                    a = match ins.code & 0xf0 {
                        ADD => a.wrapping_add(src),
                        SUB => a.wrapping_sub(src),
                        AND => a & src,
                        LSH => a << src,
                        RSH => a >> src,
                        _ => panic!("unsupported alu {:#x}", ins.code),
                    }
                }
                JMP => {
                    let op = ins.code & 0xf0;
                    if op == JA {
                        pc += ins.k as usize;
                        continue;
                    }
                    let taken = match op {
                        JEQ => a == src,
                        JGT => a > src,
                        JSET => a & src != 0,
                        _ => panic!("unsupported jump {:#x}", ins.code),
                    };
                    pc += usize::from(if taken { ins.jt } else { ins.jf });
                }
                RET => return if ins.code & 0x18 == 0x10 { a } else { ins.k },
                MISC => {
                    if ins.code & 0xf8 == TXA {
                        a = x;
                    } else {
                        x = a;
                    }
                }
                _ => panic!("unsupported class {:#x}", ins.code),
            }
        }
        panic!("program ran off its end");
    }
}

#[cfg(test)]
mod tests {
    use super::interpreter::run;
    use super::*;
    use crate::ports::DEFAULT_MAIL_PORTS;
    use etherparse::PacketBuilder;

    const CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
    const ROUTER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

    enum Ip {
        V4,
        V6,
        V4Vlan,
    }

    fn builder(ip: &Ip) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
        let eth = PacketBuilder::ethernet2(CLIENT, ROUTER);
        match ip {
            Ip::V4 => eth.ipv4([192, 168, 1, 10], [203, 0, 113, 5], 64),
            Ip::V6 => eth.ipv6([0x20; 16], [0x30; 16], 64),
            Ip::V4Vlan => eth
                .single_vlan(etherparse::VlanId::try_new(7).unwrap())
                .ipv4([192, 168, 1, 10], [203, 0, 113, 5], 64),
        }
    }

    /// A TCP segment; `flags` is a subset of "SAFR" (SYN, ACK, FIN, RST).
    fn tcp(ip: &Ip, sport: u16, dport: u16, flags: &str, payload: &[u8]) -> Vec<u8> {
        let mut b = builder(ip).tcp(sport, dport, 1000, 64240);
        if flags.contains('S') {
            b = b.syn();
        }
        if flags.contains('A') {
            b = b.ack(1);
        }
        if flags.contains('F') {
            b = b.fin();
        }
        if flags.contains('R') {
            b = b.rst();
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    fn udp(ip: &Ip, sport: u16, dport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        builder(ip)
            .udp(sport, dport)
            .write(&mut out, b"\x12\x34payload")
            .unwrap();
        out
    }

    fn passes(frame: &[u8]) -> bool {
        let prog = program(&MailPorts::default()).unwrap();
        let kept = run(&prog, frame);
        assert!(kept == 0 || kept == SNAP_LEN, "unexpected return {kept}");
        kept != 0
    }

    #[test]
    fn assembles_within_kernel_limits() {
        let prog = program(&MailPorts::default()).unwrap();
        assert!(prog.len() < 256, "{} instructions", prog.len());
        assert_eq!(prog.last().unwrap().code, RET | K);
        let most: Vec<u16> = (1..=crate::ports::MAIL_PORTS_MAX as u16).collect();
        let prog = program(&MailPorts::new(&most).unwrap()).unwrap();
        assert!(prog.len() < 256, "{} instructions", prog.len());
    }

    #[test]
    fn the_configured_port_set_is_what_passes() {
        let ports = MailPorts::new(&[25, 10025]).unwrap();
        let prog = program(&ports).unwrap();
        let kept = |f: &[u8]| run(&prog, f) != 0;
        assert!(kept(&tcp(&Ip::V4, 50000, 10025, "S", b"")));
        assert!(kept(&tcp(&Ip::V4, 10025, 50000, "SA", b"")));
        assert!(kept(&tcp(&Ip::V4, 50000, 25, "S", b"")));
        assert!(!kept(&tcp(&Ip::V4, 50000, 2525, "S", b"")));
        assert!(!kept(&tcp(&Ip::V4, 50000, 587, "S", b"")));
    }

    #[test]
    fn client_mail_traffic_passes_on_every_framing() {
        for ip in [Ip::V4, Ip::V6, Ip::V4Vlan] {
            for port in DEFAULT_MAIL_PORTS {
                assert!(passes(&tcp(&ip, 50000, port, "S", b"")), "SYN to {port}");
                assert!(
                    passes(&tcp(&ip, 50000, port, "A", b"EHLO x\r\n")),
                    "data to {port}"
                );
                assert!(passes(&tcp(&ip, 50000, port, "AF", b"")), "FIN to {port}");
                assert!(passes(&tcp(&ip, 50000, port, "R", b"")), "RST to {port}");
                assert!(
                    !passes(&tcp(&ip, 50000, port, "A", b"")),
                    "pure ACK to {port}"
                );
            }
        }
    }

    #[test]
    fn server_side_passes_handshake_answers_and_port_25_replies() {
        for ip in [Ip::V4, Ip::V6, Ip::V4Vlan] {
            for port in DEFAULT_MAIL_PORTS {
                assert!(
                    passes(&tcp(&ip, port, 50000, "SA", b"")),
                    "SYN-ACK from {port}"
                );
                assert!(passes(&tcp(&ip, port, 50000, "AR", b"")), "RST from {port}");
                assert!(!passes(&tcp(&ip, port, 50000, "A", b"")), "ACK from {port}");
            }
            assert!(passes(&tcp(&ip, 25, 50000, "A", b"220 mx ESMTP\r\n")));
            assert!(!passes(&tcp(&ip, 587, 50000, "A", b"220 relay\r\n")));
            assert!(!passes(&tcp(&ip, 465, 50000, "A", b"\x16\x03\x01")));
        }
    }

    #[test]
    fn dns_and_dhcp_requests_pass() {
        for ip in [Ip::V4, Ip::V6, Ip::V4Vlan] {
            assert!(passes(&udp(&ip, 40000, 53)));
            assert!(passes(&udp(&ip, 53, 40000)));
            assert!(passes(&udp(&ip, 68, 67)));
            assert!(
                !passes(&udp(&ip, 67, 68)),
                "DHCP server replies are not needed"
            );
        }
    }

    #[test]
    fn other_traffic_is_dropped() {
        for ip in [Ip::V4, Ip::V6, Ip::V4Vlan] {
            assert!(!passes(&tcp(&ip, 50000, 80, "S", b"")));
            assert!(!passes(&tcp(&ip, 50000, 443, "A", b"GET / HTTP/1.1\r\n")));
            assert!(!passes(&tcp(&ip, 80, 50000, "SA", b"")));
            assert!(!passes(&udp(&ip, 40000, 123)));
            assert!(!passes(&udp(&ip, 40000, 5353)));
            // TCP to port 53 is not DNS over UDP and is not needed.
            assert!(!passes(&tcp(&ip, 50000, 53, "S", b"")));
        }
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&CLIENT);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        assert!(!passes(&arp));
    }

    #[test]
    fn fragments_and_truncated_frames_are_dropped() {
        let mut frag = tcp(&Ip::V4, 50000, 25, "S", b"");
        // Fragment offset 185 (×8 bytes): a non-first fragment, whose "ports" are payload.
        frag[14 + 6] = 0x00;
        frag[14 + 7] = 0xb9;
        assert!(!passes(&frag));
        let syn = tcp(&Ip::V4, 50000, 25, "S", b"");
        for cut in [10, 20, 34, 40] {
            assert!(!passes(&syn[..cut]), "cut at {cut}");
        }
    }

    #[test]
    fn ipv4_options_shift_the_tcp_header() {
        // Rebuild a SYN to 25 with a 24-byte IPv4 header (one 4-byte NOP option block).
        let plain = tcp(&Ip::V4, 50000, 25, "S", b"");
        let mut with_opts = plain[..14 + 20].to_vec();
        with_opts.extend_from_slice(&[1, 1, 1, 1]);
        with_opts.extend_from_slice(&plain[14 + 20..]);
        with_opts[14] = 0x46;
        let total = u16::from_be_bytes([with_opts[16], with_opts[17]]) + 4;
        with_opts[16..18].copy_from_slice(&total.to_be_bytes());
        assert!(passes(&with_opts));
        // The same bytes read with a 20-byte header would see the options as ports.
        let mut to_80 = with_opts.clone();
        to_80[14 + 24 + 2..14 + 24 + 4].copy_from_slice(&80u16.to_be_bytes());
        assert!(!passes(&to_80));
    }
}
