//! The digests of the Maglev tables the dataplane installed, from its report
//! ([`fulcrum_model::TableDigest`], written with the generation they belong
//! to): what `vip list` and the Prometheus endpoint show, so that instances
//! sharing a VIP behind ECMP can be compared. Read back from the dataplane,
//! never computed here.

use super::Daemon;
use crate::metrics::VipTableView;
use crate::proto::{VipKey, VipTableInfo};

impl Daemon {
    /// The digest of VIP `k` (id `id`) in the dataplane's last report; `None`
    /// while it has not reported one (no report yet, a refused VIP, a VIP
    /// newer than the applied generation).
    pub(super) fn table_info(&self, k: VipKey, id: Option<u16>) -> Option<VipTableInfo> {
        let r = self.dp.report.as_ref()?;
        let name = k.to_string();
        let t = r.tables.iter().find(|t| Some(t.id) == id && t.vip == name)?;
        Some(VipTableInfo { digest: t.digest.clone(), generation: r.generation, slots: t.slots, backends: t.backends })
    }

    /// Every configured VIP's reported digest, for the Prometheus view.
    pub(super) fn table_views(&self) -> Vec<VipTableView> {
        self.state
            .vips
            .iter()
            .filter_map(|v| {
                let k = VipKey::of(v);
                let t = self.table_info(k, self.state.vip_id(k))?;
                Some(VipTableView { vip: k.to_string(), digest: t.digest, generation: t.generation })
            })
            .collect()
    }
}
