//! The dataplane's report: what it is ([`Facts`](fulcrum_model::Facts)), the
//! generation every lcore has installed, and the VIPs it refused, written by
//! the dataplane's control thread and read by the control plane.
//!
//! Protocol: the single writer makes `REPORT_SEQ` odd, stores length,
//! checksum (xxh3 of the payload) and the JSON payload words, then makes the
//! sequence even with Release. A reader copies length, checksum and payload
//! between two Acquire reads of an even, unchanged sequence, then checks the
//! checksum and decodes: anything else reads as "no report" (try again).

use std::sync::atomic::{fence, Ordering};

use fulcrum_model::DataplaneReport;
use xxhash_rust::xxh3::xxh3_64;

use crate::counters::Dataplane;
use crate::error::{Error, Result};
use crate::layout::*;
use crate::publish::MAX_ATTEMPTS;
use crate::segment::Segment;

impl Dataplane<'_> {
    /// Replaces the report (the control thread calls this whenever it changes).
    pub fn write_report(&self, report: &DataplaneReport) -> Result<()> {
        let bytes = serde_json::to_vec(report).map_err(|e| Error::Encode(e.to_string()))?;
        if bytes.len() > MAX_REPORT {
            return Err(Error::ReportTooLarge { len: bytes.len(), max: MAX_REPORT });
        }
        let seg = self.segment();
        let seq = seg.word(REPORT_SEQ);
        let s = seq.load(Ordering::Relaxed);
        let s = s + (s & 1);
        seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        seg.store(REPORT_LEN, bytes.len() as u64);
        seg.store(REPORT_SUM, xxh3_64(&bytes));
        seg.store_bytes(REPORT_OFF + REPORT_HDR, &bytes);
        seq.store(s.wrapping_add(2), Ordering::Release);
        Ok(())
    }
}

impl Segment {
    /// The dataplane's latest report; `None` if it has written none (or it
    /// kept changing under us, or it is corrupt: the checksum says which).
    pub fn dataplane_report(&self) -> Option<DataplaneReport> {
        let seq = self.word(REPORT_SEQ);
        for _ in 0..MAX_ATTEMPTS {
            let s1 = seq.load(Ordering::Acquire);
            if s1 == 0 || s1 % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let len = self.load(REPORT_LEN) as usize;
            let sum = self.load(REPORT_SUM);
            if len == 0 || len > MAX_REPORT {
                return None;
            }
            let buf = self.load_bytes(REPORT_OFF + REPORT_HDR, len);
            fence(Ordering::Acquire);
            if seq.load(Ordering::Relaxed) != s1 {
                continue;
            }
            if xxh3_64(&buf) != sum {
                return None;
            }
            return serde_json::from_slice(&buf).ok();
        }
        None
    }
}
