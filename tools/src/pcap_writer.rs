//! A pcap writer for the traffic simulator and the capture generator: little-endian,
//! microsecond-resolution pcap of Ethernet frames, which every tool reads (the router's own
//! reader, `smtpguard_agent::pcap`, among them).

use std::io::{self, ErrorKind, Write};

use smtpguard_agent::pcap::{LINKTYPE_ETHERNET, MAX_RECORD_BYTES};

/// Writes little-endian, microsecond-resolution pcap files of Ethernet frames.
pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header.
    ///
    /// # Errors
    /// Any error of the underlying writer.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut h = [0u8; 24];
        h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h[4..6].copy_from_slice(&2u16.to_le_bytes());
        h[6..8].copy_from_slice(&4u16.to_le_bytes());
        h[16..20].copy_from_slice(&(MAX_RECORD_BYTES as u32).to_le_bytes());
        h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&h)?;
        Ok(PcapWriter { out })
    }

    /// Appends one frame captured at `ts_us` (Unix microseconds).
    ///
    /// # Errors
    /// `InvalidInput` for frames over [`MAX_RECORD_BYTES`] or timestamps past 2106; any
    /// error of the underlying writer.
    pub fn write_frame(&mut self, ts_us: u64, frame: &[u8]) -> io::Result<()> {
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|l| (*l as usize) <= MAX_RECORD_BYTES)
            .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "frame too large"))?;
        let secs = u32::try_from(ts_us / 1_000_000)
            .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "timestamp out of range"))?;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&secs.to_le_bytes());
        h[4..8].copy_from_slice(&((ts_us % 1_000_000) as u32).to_le_bytes());
        h[8..12].copy_from_slice(&len.to_le_bytes());
        h[12..16].copy_from_slice(&len.to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(frame)
    }

    /// Flushes and returns the underlying writer.
    ///
    /// # Errors
    /// Any error of the underlying writer's flush.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtpguard_agent::pcap::CaptureReader;

    #[test]
    fn what_it_writes_the_agent_reads_back() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write_frame(1_564_419_705_390_017, &[1, 2, 3]).unwrap();
        w.write_frame(1_564_419_705_598_430, &[4; 60]).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(&bytes[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        let mut r = CaptureReader::new(&bytes[..]).unwrap();
        let first = r.next_packet().unwrap().unwrap();
        assert_eq!(
            (first.ts_ns, first.data.to_vec()),
            (1_564_419_705_390_017_000, vec![1, 2, 3])
        );
        assert_eq!(r.next_packet().unwrap().unwrap().data.len(), 60);
        assert!(r.next_packet().unwrap().is_none());
    }

    #[test]
    fn oversized_frames_and_far_future_times_are_refused() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        let big = vec![0u8; MAX_RECORD_BYTES + 1];
        assert_eq!(
            w.write_frame(0, &big).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let late = (u64::from(u32::MAX) + 1) * 1_000_000;
        assert_eq!(
            w.write_frame(late, &[1]).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
}
