//! [`publish::Segment`](crate::publish::Segment) bound to `fulcrum-shm`.

use crate::publish::{self, Counters, DataplaneView};
use fulcrum_model::{DataplaneReport, Generation};
use fulcrum_shm as shm;
use std::path::Path;

pub struct ShmSegment {
    seg: &'static shm::Segment,
    publisher: Option<shm::Publisher<'static>>,
    totals: shm::CounterTotals,
}

/// Opens (or creates) the segment and takes the control-plane role.
pub fn open(path: &Path) -> Result<Box<dyn publish::Segment>, String> {
    let seg = shm::Segment::open_or_create(path).map_err(|e| e.to_string())?;
    // The segment lives as long as the daemon; the publisher borrows it.
    let seg: &'static shm::Segment = Box::leak(Box::new(seg));
    // A control plane killed without a clean shutdown leaves a heartbeat that
    // looks fresh for up to CLAIM_STALE_AFTER: if its pid is gone, wait it out.
    let deadline = std::time::Instant::now() + shm::CLAIM_STALE_AFTER * 2;
    let publisher = loop {
        match seg.publisher() {
            Ok(p) => break p,
            Err(shm::Error::AlreadyRunning { pid, .. })
                if !Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    Ok(Box::new(ShmSegment { seg, publisher: Some(publisher), totals: shm::CounterTotals::new() }))
}

impl publish::Segment for ShmSegment {
    fn publish(&mut self, g: &Generation) -> Result<u64, String> {
        let p = self.publisher.as_mut().ok_or("the segment is closed")?;
        p.publish(g).map_err(|e| e.to_string())
    }

    fn already_published(&mut self, g: &Generation) -> Option<u64> {
        match self.seg.current_config() {
            shm::Poll::New(cfg, n) if cfg == *g => Some(n),
            _ => None,
        }
    }

    fn heartbeat(&mut self) {
        if let Some(p) = &self.publisher {
            p.heartbeat();
        }
    }

    fn dataplane(&mut self) -> DataplaneView {
        let s = self.seg.dataplane_status();
        let now = shm::now_ns();
        DataplaneView {
            present: s.epoch != 0,
            pid: s.pid as u32,
            epoch: s.epoch,
            beat: s.heartbeat_ns,
            uptime_secs: (s.start_ns != 0 && s.heartbeat_ns != 0).then(|| now.saturating_sub(s.start_ns) / 1_000_000_000),
            applied_generation: s.applied_generation,
            rejected_generations: s.rejected_count,
            last_rejection: (s.last_reject_code != 0).then(|| {
                format!("generation {}: {}", s.last_reject_generation, shm::reject_code_name(s.last_reject_code))
            }),
            segment: self.seg.check().err().map(|e| e.to_string()),
        }
    }

    fn report(&mut self) -> Option<DataplaneReport> {
        self.seg.dataplane_report()
    }

    fn counters(&mut self, vip_ids: &[u16], slots: &[u32]) -> Counters {
        crate::segment_counters::read(self.seg, &mut self.totals, vip_ids, slots)
    }

    fn capacity(&self) -> (usize, usize) {
        (shm::MAX_VIPS, shm::MAX_BACKENDS)
    }

    fn close(&mut self) {
        // Dropping the publisher writes heartbeat 0: a clean shutdown.
        self.publisher = None;
    }
}
