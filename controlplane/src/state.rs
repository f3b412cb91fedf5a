//! The state file: the desired configuration (TOML plus every CLI change),
//! the TOML as last loaded (the base of the three-way merge on reload), and
//! the VIP id and backend slot maps. Rewritten atomically (temp + rename) on
//! every change.

use crate::model::{BackendSpec, VipSpec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::path::Path;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// What is published (before health).
    pub vips: Vec<VipSpec>,
    /// The TOML's VIPs when it was last loaded.
    pub toml_base: Vec<VipSpec>,
    /// `"addr:port"` → VIP id. Entries outlive their VIP, so a VIP that comes
    /// back gets its old id.
    pub vip_ids: BTreeMap<String, u16>,
    /// `"vip_addr:port/backend_addr:port"` → slot. Entries outlive their
    /// backend, like `vip_ids`.
    pub slots: BTreeMap<String, u32>,
    /// Last generation number published.
    #[serde(default)]
    pub generation: u64,
}

pub fn slot_key(vip: SocketAddrV4, backend: SocketAddrV4) -> String {
    format!("{vip}/{backend}")
}

impl State {
    pub fn load(path: &Path) -> Result<Option<State>, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| format!("{}: not a valid state file: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
        }
    }

    /// Writes a temporary file beside `path`, syncs it and renames it over.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        use std::io::Write;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.sync_all().map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    pub fn vip(&self, addr: SocketAddrV4) -> Option<&VipSpec> {
        self.vips.iter().find(|v| v.addr() == addr)
    }

    pub fn vip_mut(&mut self, addr: SocketAddrV4) -> Option<&mut VipSpec> {
        self.vips.iter_mut().find(|v| v.addr() == addr)
    }

    /// Gives every VIP an id and every backend a slot, keeping the ones they
    /// have. A new one gets the next never-used number; only when the space
    /// is exhausted is a retired number (of a VIP/backend no longer
    /// configured) reused.
    pub fn assign_ids(&mut self, max_vips: usize, max_slots: usize) -> Result<(), String> {
        let live_vips: BTreeSet<String> = self.vips.iter().map(|v| v.addr().to_string()).collect();
        for v in &self.vips {
            let key = v.addr().to_string();
            if self.vip_ids.contains_key(&key) {
                continue;
            }
            let id = allocate(&self.vip_ids, &live_vips, max_vips)
                .ok_or_else(|| format!("no VIP id left (at most {max_vips} VIPs)"))?;
            let id = u16::try_from(id).map_err(|_| "VIP id space exhausted".to_owned())?;
            // A retired key holding this id is forgotten.
            self.vip_ids.retain(|_, v| *v != id);
            self.vip_ids.insert(key, id);
        }
        let live_slots: BTreeSet<String> = self
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(move |b| slot_key(v.addr(), b.addr())))
            .collect();
        for v in &self.vips {
            for b in &v.backends {
                let key = slot_key(v.addr(), b.addr());
                if self.slots.contains_key(&key) {
                    continue;
                }
                let slot = allocate(&self.slots, &live_slots, max_slots)
                    .ok_or_else(|| format!("no backend slot left (at most {max_slots} backends)"))?;
                let slot = slot as u32;
                self.slots.retain(|_, s| *s != slot);
                self.slots.insert(key, slot);
            }
        }
        Ok(())
    }

    pub fn vip_id(&self, addr: SocketAddrV4) -> Option<u16> {
        self.vip_ids.get(&addr.to_string()).copied()
    }

    pub fn slot(&self, vip: SocketAddrV4, backend: SocketAddrV4) -> Option<u32> {
        self.slots.get(&slot_key(vip, backend)).copied()
    }
}

fn allocate<T: Copy + Into<u64>>(map: &BTreeMap<String, T>, live: &BTreeSet<String>, max: usize) -> Option<u64> {
    let next = map.values().map(|&v| v.into() + 1).max().unwrap_or(0);
    if (next as usize) < max {
        return Some(next);
    }
    let in_use: BTreeSet<u64> = map.iter().filter(|(k, _)| live.contains(*k)).map(|(_, &v)| v.into()).collect();
    (0..max as u64).find(|n| !in_use.contains(n))
}

/// Three-way merge of a re-read TOML into the current desired configuration.
///
/// * A VIP or backend that is new in the TOML (not in `base`) is added (it
///   replaces one of the same address made with the CLI).
/// * One that was in `base` and is gone from the TOML is removed.
/// * For one in both: every field whose TOML value changed since `base` takes
///   the new value; every other field keeps its current value, so CLI changes
///   (weights, limits, drains) survive unless the TOML edits that same field.
/// * Something deleted with the CLI stays deleted while it stays in the TOML.
pub fn merge(current: &[VipSpec], base: &[VipSpec], new: &[VipSpec]) -> Vec<VipSpec> {
    let find = |list: &[VipSpec], a: SocketAddrV4| list.iter().find(|v| v.addr() == a).cloned();
    let mut out = Vec::new();
    for cur in current {
        let a = cur.addr();
        match (find(base, a), find(new, a)) {
            (Some(_), None) => {} // removed from the TOML
            (None, Some(n)) => out.push(n), // new in the TOML: replaces the CLI's
            (Some(b), Some(n)) => out.push(merge_vip(cur, &b, &n)),
            (None, None) => out.push(cur.clone()), // made with the CLI
        }
    }
    for n in new {
        let a = n.addr();
        if find(current, a).is_none() && find(base, a).is_none() {
            out.push(n.clone());
        }
    }
    out
}

fn merge_vip(cur: &VipSpec, base: &VipSpec, new: &VipSpec) -> VipSpec {
    let fields = |v: &VipSpec| match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => unreachable!("a VipSpec serialises to an object"),
    };
    let (c, b, n) = (fields(cur), fields(base), fields(new));
    let mut merged = c.clone();
    for (k, nv) in &n {
        if k == "backends" {
            continue;
        }
        if b.get(k) != Some(nv) {
            merged.insert(k.clone(), nv.clone());
        }
    }
    let mut out: VipSpec = serde_json::from_value(serde_json::Value::Object(merged)).expect("merged fields are valid");
    let findb = |list: &[BackendSpec], a: SocketAddrV4| list.iter().find(|x| x.addr() == a).cloned();
    let mut backends = Vec::new();
    for cb in &cur.backends {
        match (findb(&base.backends, cb.addr()), findb(&new.backends, cb.addr())) {
            (Some(_), None) => {}
            (None, Some(nb)) => backends.push(nb),
            (Some(bb), Some(nb)) => {
                let mut m = cb.clone();
                if nb.weight != bb.weight {
                    m.weight = nb.weight;
                }
                backends.push(m);
            }
            (None, None) => backends.push(cb.clone()),
        }
    }
    for nb in &new.backends {
        if findb(&cur.backends, nb.addr()).is_none() && findb(&base.backends, nb.addr()).is_none() {
            backends.push(nb.clone());
        }
    }
    out.backends = backends;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VipSpec;

    fn vip(port: u16, backends: &[(u16, u32)]) -> VipSpec {
        let mut v = VipSpec::new(SocketAddrV4::new([198, 18, 1, 1].into(), port));
        v.backends = backends
            .iter()
            .map(|&(p, w)| BackendSpec { address: [198, 18, 0, 21].into(), port: p, weight: w, drain: false })
            .collect();
        v
    }

    #[test]
    fn merge_keeps_cli_changes() {
        let base = vec![vip(80, &[(1, 1), (2, 1), (3, 1)]), vip(81, &[(1, 1)])];
        // CLI: weight of backend 1 set to 5, VIP 82 added, max_connections changed.
        let mut cur = base.clone();
        cur[0].backends[0].weight = 5;
        cur[0].max_connections = 7;
        cur.push(vip(82, &[(9, 1)]));
        // TOML: backend 3 removed, 4 added, VIP 81 removed, VIP 83 added, idle timeout changed.
        let mut new = vec![vip(80, &[(1, 1), (2, 1), (4, 1)]), vip(83, &[])];
        new[0].idle_timeout_ms = 5;
        let m = merge(&cur, &base, &new);
        let ports: Vec<u16> = m.iter().map(|v| v.port).collect();
        assert_eq!(ports, vec![80, 82, 83]);
        let b: Vec<(u16, u32)> = m[0].backends.iter().map(|b| (b.port, b.weight)).collect();
        assert_eq!(b, vec![(1, 5), (2, 1), (4, 1)]);
        assert_eq!(m[0].max_connections, 7);
        assert_eq!(m[0].idle_timeout_ms, 5);
    }

    #[test]
    fn slots_are_stable_and_not_reused_early() {
        let mut s = State { vips: vec![vip(80, &[(1, 1), (2, 1)])], ..Default::default() };
        s.assign_ids(4, 3).unwrap();
        let a = s.vips[0].addr();
        let b1 = SocketAddrV4::new([198, 18, 0, 21].into(), 1);
        let b2 = SocketAddrV4::new([198, 18, 0, 21].into(), 2);
        assert_eq!(s.slot(a, b1), Some(0));
        assert_eq!(s.slot(a, b2), Some(1));
        s.vips[0].backends.remove(0);
        s.vips[0].backends.push(vip(80, &[(3, 1)]).backends[0].clone());
        s.assign_ids(4, 3).unwrap();
        assert_eq!(s.slot(a, b2), Some(1));
        assert_eq!(s.slot(a, SocketAddrV4::new([198, 18, 0, 21].into(), 3)), Some(2));
        // Space exhausted: the retired slot 0 is reused.
        s.vips[0].backends.push(vip(80, &[(4, 1)]).backends[0].clone());
        s.assign_ids(4, 3).unwrap();
        assert_eq!(s.slot(a, SocketAddrV4::new([198, 18, 0, 21].into(), 4)), Some(0));
        assert_eq!(s.slot(a, b1), None);
    }
}
