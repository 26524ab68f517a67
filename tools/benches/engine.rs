//! Engine cost per packet over a simulated mixed household (clean devices on the relay,
//! bots spamming direct-to-MX), against a baseline measured in the same run: merely
//! decoding the same frames with etherparse. Plus replay throughput from an in-memory pcap.
//!
//! `cargo bench -p smtpguard-tools --bench engine`; compare `engine/handle_frame` with
//! `engine/decode_only` (ns per packet) and `replay/pcap_in_memory` (packets/s).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use smtpguard_agent::engine::{Engine, EngineConfig};
use smtpguard_agent::packet;
use smtpguard_agent::replay;
use smtpguard_protocol::Policy;
use smtpguard_tools::sim::{self, Household};

fn frames() -> Vec<sim::Frame> {
    sim::mixed_household(1, 6, 2, 300, 2)
}

fn config() -> EngineConfig {
    EngineConfig {
        router_macs: vec![Household::router_mac()],
        ..EngineConfig::default()
    }
}

fn bench(c: &mut Criterion) {
    let frames = frames();
    let n = frames.len() as u64;
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(n));
    g.bench_function("decode_only", |b| {
        b.iter(|| {
            let mut tcp = 0u32;
            for f in &frames {
                if let Ok(Some(p)) = packet::decode(black_box(&f.data)) {
                    if matches!(p.transport, packet::Transport::Tcp(_)) {
                        tcp += 1;
                    }
                }
            }
            tcp
        })
    });
    g.bench_function("handle_frame", |b| {
        b.iter(|| {
            let mut e = Engine::new(config(), Policy::default());
            for f in &frames {
                if e.poll_timeout().is_some_and(|t| t <= f.ts_ms) {
                    e.handle_timeout(f.ts_ms);
                }
                e.handle_frame(f.ts_ms, black_box(&f.data));
                while e.poll_action().is_some() {}
            }
            e.stats().packets
        })
    });
    g.finish();

    let pcap = sim::write_pcap(Vec::new(), &frames).unwrap();
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(n));
    g.bench_function("pcap_in_memory", |b| {
        b.iter(|| {
            let out =
                replay::replay_reader(black_box(&pcap[..]), "bench", Policy::default(), config())
                    .unwrap();
            out.report.packets
        })
    });
    g.finish();
    eprintln!("bench timeline: {n} frames, {} pcap bytes", pcap.len());
}

criterion_group!(benches, bench);
criterion_main!(benches);
