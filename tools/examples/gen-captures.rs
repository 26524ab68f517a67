//! Writes the benchmark captures with the traffic simulator (`smtpguard_tools::sim`):
//!
//! - `households`: many households' devices behind their routers, as seen at one capture
//!   point: clean devices submitting mail through the provider's relay (587, STARTTLS),
//!   some doing MX lookups, and in every fourth household one bot sending direct-to-MX spam
//!   (MX lookup, port-25 session with a random EHLO, some unanswered SYNs). Devices have
//!   distinct MACs and addresses per household.
//! - `flood`: a MAC flood: `--macs` spoofed MACs, each with a DHCP request, an MX lookup and
//!   an unanswered SYN to port 25, spread over ten minutes.
//!
//! The output is a function of the arguments (the seed fixes every random choice). Frames
//! are produced an hour (households) or a minute (flood) at a time and streamed to the file,
//! so memory stays small whatever the size.
//!
//! ```text
//! cargo run --release --example gen-captures -- households --out /tmp/hh.pcap
//! cargo run --release --example gen-captures -- flood --out /tmp/flood.pcap
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::BufWriter;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use smtpguard_protocol::MacAddr;
use smtpguard_tools::pcap_writer::PcapWriter;
use smtpguard_tools::sim::{Dialogue, Frame, Host, Household, EPOCH_MS};

#[derive(Debug, Parser)]
#[command(about = "Write benchmark captures with the smtpguard traffic simulator")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Many households, mixed clean and bot traffic.
    Households {
        /// Output pcap file.
        #[arg(long)]
        out: PathBuf,
        /// Number of households (at most 4096).
        #[arg(long, default_value_t = 120)]
        households: u16,
        /// Clean devices per household.
        #[arg(long, default_value_t = 7)]
        clean: u8,
        /// Hours of traffic.
        #[arg(long, default_value_t = 9)]
        hours: u32,
        /// Direct-to-MX sessions per hour of each bot.
        #[arg(long, default_value_t = 120)]
        bot_rate_per_hour: u32,
        /// Seed of every random choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// A flood of spoofed MACs.
    Flood {
        /// Output pcap file.
        #[arg(long)]
        out: PathBuf,
        /// Number of distinct spoofed MACs.
        #[arg(long, default_value_t = 30_000)]
        macs: u32,
        /// Seed of every random choice.
        #[arg(long, default_value_t = 2)]
        seed: u64,
    },
}

const HOUR_MS: u64 = 3_600_000;
const MINUTE_MS: u64 = 60_000;
const RELAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

struct Out {
    writer: PcapWriter<BufWriter<File>>,
    frames: u64,
}

impl Out {
    fn create(path: &PathBuf) -> anyhow::Result<Out> {
        let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
        Ok(Out {
            writer: PcapWriter::new(BufWriter::with_capacity(1 << 20, file))?,
            frames: 0,
        })
    }

    fn write(&mut self, frames: Vec<Frame>) -> anyhow::Result<()> {
        for f in frames {
            self.writer.write_frame(f.ts_ms * 1000, &f.data)?;
            self.frames += 1;
        }
        Ok(())
    }

    fn finish(self, path: &std::path::Path) -> anyhow::Result<()> {
        use std::io::Write;
        self.writer.finish()?.flush()?;
        eprintln!("{}: {} frames", path.display(), self.frames);
        Ok(())
    }
}

/// Device `dev` of household `home`: its own MAC and address.
fn device(home: u16, dev: u8, name: Option<String>) -> Host {
    let [hi, lo] = home.to_be_bytes();
    Host {
        mac: MacAddr([0x02, 0x5a, hi, lo, 0x01, dev]),
        ip: Ipv4Addr::new(10, hi, lo, 10u8.wrapping_add(dev)),
        hostname: name,
    }
}

fn households(
    out_path: &PathBuf,
    homes: u16,
    clean: u8,
    hours: u32,
    bot_rate: u32,
    seed: u64,
) -> anyhow::Result<()> {
    anyhow::ensure!(homes <= 4096, "at most 4096 households");
    let mut out = Out::create(out_path)?;
    let mut h = Household::new(seed);
    let mut clean_hosts = Vec::new();
    let mut bots = Vec::new();
    for home in 0..homes {
        for dev in 0..clean {
            clean_hosts.push(device(home, dev, Some(format!("home{home}-device{dev}"))));
        }
        if home % 4 == 0 {
            bots.push(device(home, 200, Some(format!("home{home}-pc"))));
        }
    }
    for (i, host) in clean_hosts.iter().chain(&bots).enumerate() {
        h.dhcp(EPOCH_MS + i as u64 * 20, host);
    }
    let gap = HOUR_MS / u64::from(bot_rate.max(1));
    for hour in 0..u64::from(hours) {
        let start = EPOCH_MS + hour * HOUR_MS + MINUTE_MS;
        // Events are added in start-time order within the hour, after everything earlier
        // has been written: sessions are short, so nothing spills back into a past hour.
        let mut events: Vec<(u64, usize, u8)> = Vec::new();
        for i in 0..clean_hosts.len() {
            for _ in 0..1 + h.rng().below(3) {
                let kind = if h.rng().below(4) == 0 { 1 } else { 0 };
                events.push((start + h.rng().below(HOUR_MS - 2 * MINUTE_MS), i, kind));
            }
        }
        for i in 0..bots.len() {
            let mut t = start + h.rng().below(gap);
            while t < start + HOUR_MS - 2 * MINUTE_MS {
                let kind = if h.rng().below(10) == 0 { 3 } else { 2 };
                events.push((t, i, kind));
                t += gap / 2 + h.rng().below(gap);
            }
        }
        events.sort_unstable();
        for (t, i, kind) in events {
            match kind {
                0 => {
                    let host = &clean_hosts[i];
                    let d = Dialogue {
                        starttls: true,
                        ..Dialogue::mail_client(&format!(
                            "{}.lan",
                            host.hostname.as_deref().unwrap_or("pc")
                        ))
                    };
                    h.smtp_session(t, host, RELAY, 587, &d);
                }
                1 => {
                    let host = &clean_hosts[i];
                    let domain = format!("{}.org", h.rng().word());
                    let ip = h.rng().public_ip();
                    h.mx_lookup(t, host, &domain, &format!("mx.{domain}"), ip);
                }
                2 => {
                    let host = &bots[i];
                    let domain = format!("{}.com", h.rng().word());
                    let ip = h.rng().public_ip();
                    h.mx_lookup(t, host, &domain, &format!("mx.{domain}"), ip);
                    let d = Dialogue::bot(h.rng());
                    h.smtp_session(t + 40, host, ip, 25, &d);
                }
                _ => {
                    let ip = h.rng().public_ip();
                    h.syn_unanswered(t, &bots[i], ip, 25);
                }
            }
        }
        out.write(h.take_before(start + HOUR_MS - MINUTE_MS))?;
    }
    out.write(h.into_frames())?;
    out.finish(out_path)
}

fn flood(out_path: &PathBuf, macs: u32, seed: u64) -> anyhow::Result<()> {
    let mut out = Out::create(out_path)?;
    let mut h = Household::new(seed);
    let per_ms = 10 * MINUTE_MS / u64::from(macs.max(1));
    let mut flushed = EPOCH_MS;
    for n in 0..macs {
        let t = EPOCH_MS + u64::from(n) * per_ms.max(1);
        let [_, b, c, d] = n.to_be_bytes();
        let host = h.device_with_mac([0x02, 0xf1, 0x00, b, c, d]);
        h.dhcp(t, &host);
        let domain = format!("{}.net", h.rng().word());
        let ip = h.rng().public_ip();
        h.mx_lookup(t + 5, &host, &domain, &format!("mx.{domain}"), ip);
        h.syn_unanswered(t + 10, &host, ip, 25);
        if t > flushed + MINUTE_MS {
            out.write(h.take_before(t))?;
            flushed = t;
        }
    }
    out.write(h.into_frames())?;
    out.finish(out_path)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().what {
        What::Households {
            out,
            households: homes,
            clean,
            hours,
            bot_rate_per_hour,
            seed,
        } => households(&out, homes, clean, hours, bot_rate_per_hour, seed),
        What::Flood { out, macs, seed } => flood(&out, macs, seed),
    }
}
