//! The stats file: every lcore's counters and the pool's occupancy as JSON,
//! rewritten atomically (write then rename) so readers never see half a file.

use crate::counters::{LcoreCounters, LcoreSnapshot};
use crate::dpdk::Mempool;
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
pub struct Stats {
    pub lcores: Vec<LcoreSnapshot>,
    pub mbufs_in_use: u32,
    pub mbufs_total: u32,
}

impl Stats {
    pub fn collect(lcores: &[(u32, LcoreCounters)], pool: &Mempool) -> Stats {
        Stats {
            lcores: lcores.iter().map(|(id, c)| c.snapshot(*id)).collect(),
            mbufs_in_use: pool.in_use(),
            mbufs_total: pool.capacity(),
        }
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path)
    }
}
