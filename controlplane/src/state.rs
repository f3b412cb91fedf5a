//! The state file: the desired configuration (TOML plus every CLI change),
//! the TOML as last loaded (the base of the three-way merge on reload), and
//! the VIP id and backend slot maps. Rewritten atomically (temp + rename) on
//! every change. Its `version` says which shape it has: a file of another
//! version is refused with a clear error, never misread.

use crate::proto::VipKey;
use fulcrum_model::{Backend, Vip, MAX_BACKENDS, MAX_VIPS};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::path::Path;

/// The state file's shape: 2 since VIPs are `fulcrum_model::Vip` (keyed by
/// address, port and protocol; backend drain is `state = "drain"`); 3 adds
/// `out_of_rotation`.
///
/// Version 3 is only written while the instance is out of rotation: a file
/// in rotation is written as version 2 (the same shape without the field),
/// so an older control plane still reads it; one out of rotation is refused
/// by an older control plane (which would silently put the instance back in
/// rotation) with the version error. Both versions are read.
pub const STATE_VERSION: u32 = 3;
/// The oldest version read (see [`STATE_VERSION`]).
pub const STATE_VERSION_MIN: u32 = 2;

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// What is published (before health).
    pub vips: Vec<Vip>,
    /// The TOML's VIPs when it was last loaded.
    pub toml_base: Vec<Vip>,
    /// [`VipKey`] (`"addr:port"`, `"addr:port/udp"`) → VIP id. Entries
    /// outlive their VIP, so a VIP that comes back gets its old id.
    pub vip_ids: BTreeMap<String, u16>,
    /// `"<vip key>/backend_addr:port"` → slot. Entries outlive their
    /// backend, like `vip_ids`.
    pub slots: BTreeMap<String, u32>,
    /// Last generation number published.
    #[serde(default)]
    pub generation: u64,
    /// Taken out of rotation (`fulcrumctl rotation out`): no VIP is
    /// announced over BGP. Version 3 (written only when true).
    #[serde(default, skip_serializing_if = "is_false")]
    pub out_of_rotation: bool,
}

impl Default for State {
    fn default() -> State {
        State {
            version: STATE_VERSION,
            vips: Vec::new(),
            toml_base: Vec::new(),
            vip_ids: BTreeMap::new(),
            slots: BTreeMap::new(),
            generation: 0,
            out_of_rotation: false,
        }
    }
}

pub fn slot_key(vip: VipKey, backend: SocketAddrV4) -> String {
    format!("{vip}/{backend}")
}

/// What [`State::load_or_set_aside`] found.
#[derive(Debug)]
pub enum Loaded {
    Missing,
    Found(State),
    /// The file was corrupt and is now `copy`; `message` says so, naming both.
    SetAside { message: String, copy: std::path::PathBuf },
}

/// A state file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(
        "{path}: state file version {found} (written by {by}); this fulcrum-controlplane reads versions \
         {STATE_VERSION_MIN} and {STATE_VERSION}: move the file aside to start from the TOML (changes made with fulcrumctl since \
         are not carried over)"
    )]
    Version { path: String, found: String, by: &'static str },
    #[error("{path}: not a valid state file: {message}")]
    Invalid { path: String, message: String },
    #[error("{0}")]
    Write(String),
}

impl State {
    pub fn load(path: &Path) -> Result<Option<State>, StateError> {
        let p = || path.display().to_string();
        let bytes = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path: p(), source }),
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| StateError::Invalid { path: p(), message: e.to_string() })?;
        if !value.is_object() {
            return Err(StateError::Invalid { path: p(), message: "not a JSON object".into() });
        }
        match value.get("version") {
            None => {
                return Err(StateError::Version { path: p(), found: "1".into(), by: "an older fulcrum-controlplane" })
            }
            Some(v)
                if !v.as_u64().is_some_and(|n| {
                    (u64::from(STATE_VERSION_MIN)..=u64::from(STATE_VERSION)).contains(&n)
                }) =>
            {
                let by = if v.as_u64().is_some_and(|n| n > u64::from(STATE_VERSION)) {
                    "a newer fulcrum-controlplane"
                } else {
                    "another fulcrum-controlplane"
                };
                return Err(StateError::Version { path: p(), found: v.to_string(), by });
            }
            Some(_) => {}
        }
        let state: State =
            serde_json::from_value(value).map_err(|e| StateError::Invalid { path: p(), message: e.to_string() })?;
        state.check().map_err(|message| StateError::Invalid { path: p(), message })?;
        Ok(Some(state))
    }

    /// What [`State::load`] trusts nothing of: VIP ids below
    /// [`MAX_VIPS`], slots below [`MAX_BACKENDS`], no id or slot given
    /// twice, and the VIPs (desired and TOML base) valid for the model.
    pub fn check(&self) -> Result<(), String> {
        for (key, &id) in &self.vip_ids {
            if usize::from(id) >= MAX_VIPS {
                return Err(format!("vip_ids: {key}: id {id} out of range (at most {})", MAX_VIPS - 1));
            }
        }
        for (key, &slot) in &self.slots {
            if slot as usize >= MAX_BACKENDS {
                return Err(format!("slots: {key}: slot {slot} out of range (at most {})", MAX_BACKENDS - 1));
            }
        }
        fn unique<T: Copy + Ord + std::fmt::Display>(what: &str, map: &BTreeMap<String, T>) -> Result<(), String> {
            let mut seen: BTreeMap<T, &str> = BTreeMap::new();
            for (key, &n) in map {
                if let Some(other) = seen.insert(n, key) {
                    return Err(format!("{what}: {n} is given to both {other} and {key}"));
                }
            }
            Ok(())
        }
        unique("vip_ids", &self.vip_ids)?;
        unique("slots", &self.slots)?;
        crate::config::check_vips(&self.vips).map_err(|e| format!("vips: {e}"))?;
        crate::config::check_vips(&self.toml_base).map_err(|e| format!("toml_base: {e}"))?;
        Ok(())
    }

    /// [`State::load`], but a file that is not a valid state file (not
    /// JSON, truncated, ids, slots or VIPs refused by [`State::check`]) is
    /// renamed `<name>.corrupt-<unix time>` and reported as
    /// [`Loaded::SetAside`]: the daemon starts from the TOML. A file of
    /// another version, or one that cannot be read, is still an error.
    pub fn load_or_set_aside(path: &Path) -> Result<Loaded, StateError> {
        match State::load(path) {
            Ok(None) => Ok(Loaded::Missing),
            Ok(Some(s)) => Ok(Loaded::Found(s)),
            Err(StateError::Invalid { path: shown, message }) => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let mut name = path.file_name().unwrap_or_default().to_owned();
                name.push(format!(".corrupt-{}", now.as_secs()));
                let copy = path.with_file_name(name);
                std::fs::rename(path, &copy).map_err(|e| {
                    StateError::Write(format!(
                        "{shown}: not a valid state file ({message}), and it cannot be moved aside to {}: {e}",
                        copy.display()
                    ))
                })?;
                Ok(Loaded::SetAside {
                    message: format!(
                        "{shown}: not a valid state file ({message}); kept as {}; starting from the TOML \
                         (changes made with fulcrumctl and the VIP ids and backend slots are not carried over)",
                        copy.display()
                    ),
                    copy,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Writes a temporary file beside `path`, syncs it and renames it over.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        self.write(path).map_err(StateError::Write)
    }

    fn write(&self, path: &Path) -> Result<(), String> {
        use std::io::Write;
        let mut this = self.clone();
        this.version = if self.out_of_rotation { STATE_VERSION } else { STATE_VERSION_MIN };
        let this = &this;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let text = serde_json::to_string_pretty(this).map_err(|e| e.to_string())?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.sync_all().map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    pub fn vip(&self, key: VipKey) -> Option<&Vip> {
        self.vips.iter().find(|v| key.is(v))
    }

    /// Gives every VIP an id and every backend a slot, keeping the ones they
    /// have. A new one gets the next never-used number; only when the space
    /// is exhausted is a retired number (of a VIP/backend no longer
    /// configured) reused.
    pub fn assign_ids(&mut self, max_vips: usize, max_slots: usize) -> Result<(), String> {
        let live_vips: BTreeSet<String> = self.vips.iter().map(|v| VipKey::of(v).to_string()).collect();
        for v in &self.vips {
            let key = VipKey::of(v).to_string();
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
            .flat_map(|v| v.backends.iter().map(move |b| slot_key(VipKey::of(v), b.endpoint())))
            .collect();
        for v in &self.vips {
            for b in &v.backends {
                let key = slot_key(VipKey::of(v), b.endpoint());
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

    pub fn vip_id(&self, vip: VipKey) -> Option<u16> {
        self.vip_ids.get(&vip.to_string()).copied()
    }

    pub fn slot(&self, vip: VipKey, backend: SocketAddrV4) -> Option<u32> {
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
pub fn merge(current: &[Vip], base: &[Vip], new: &[Vip]) -> Vec<Vip> {
    let find = |list: &[Vip], k: VipKey| list.iter().find(|v| k.is(v)).cloned();
    let mut out = Vec::new();
    for cur in current {
        let k = VipKey::of(cur);
        match (find(base, k), find(new, k)) {
            (Some(_), None) => {}           // removed from the TOML
            (None, Some(n)) => out.push(n), // new in the TOML: replaces the CLI's
            (Some(b), Some(n)) => out.push(merge_vip(cur, &b, &n)),
            (None, None) => out.push(cur.clone()), // made with the CLI
        }
    }
    for n in new {
        let k = VipKey::of(n);
        if find(current, k).is_none() && find(base, k).is_none() {
            out.push(n.clone());
        }
    }
    out
}

/// `cur` with every field (but `skip`) whose value in `new` differs from
/// `base` taken from `new`.
fn merge_fields<T: Serialize + serde::de::DeserializeOwned>(cur: &T, base: &T, new: &T, skip: &str) -> T {
    let fields = |v: &T| match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => unreachable!("a VIP or backend serialises to an object"),
    };
    let (c, b, n) = (fields(cur), fields(base), fields(new));
    let mut merged = c;
    for (k, nv) in n {
        if k != skip && b.get(&k) != Some(&nv) {
            merged.insert(k, nv);
        }
    }
    serde_json::from_value(serde_json::Value::Object(merged)).expect("merged fields are valid")
}

fn merge_vip(cur: &Vip, base: &Vip, new: &Vip) -> Vip {
    let mut out = merge_fields(cur, base, new, "backends");
    let findb = |list: &[Backend], a: SocketAddrV4| list.iter().find(|x| x.endpoint() == a).cloned();
    let mut backends = Vec::new();
    for cb in &cur.backends {
        match (findb(&base.backends, cb.endpoint()), findb(&new.backends, cb.endpoint())) {
            (Some(_), None) => {}
            (None, Some(nb)) => backends.push(nb),
            (Some(bb), Some(nb)) => backends.push(merge_fields(cb, &bb, &nb, "")),
            (None, None) => backends.push(cb.clone()),
        }
    }
    for nb in &new.backends {
        if findb(&cur.backends, nb.endpoint()).is_none() && findb(&base.backends, nb.endpoint()).is_none() {
            backends.push(nb.clone());
        }
    }
    out.backends = backends;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_model::Mode;

    fn vip(port: u16, backends: &[(u16, u32)]) -> Vip {
        let mut v = Vip::new([198, 18, 1, 1].into(), port, Mode::Proxy);
        v.backends = backends.iter().map(|&(p, w)| Backend::new([198, 18, 0, 21].into(), p, w)).collect();
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
        let a = VipKey::of(&s.vips[0]);
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

#[cfg(test)]
mod more_tests {
    use super::*;
    use fulcrum_model::{BackendState, Mode, Proto};

    #[test]
    fn tcp_and_udp_vips_have_their_own_ids_and_drain_merges() {
        let mut tcp = Vip::new([198, 18, 1, 1].into(), 53, Mode::Dsr);
        tcp.backends.push(Backend::new([198, 18, 0, 21].into(), 53, 1));
        let udp = Vip { proto: Proto::Udp, ..tcp.clone() };
        let mut s = State { vips: vec![tcp.clone(), udp.clone()], ..Default::default() };
        s.assign_ids(4, 4).unwrap();
        let (kt, ku) = (VipKey::of(&tcp), VipKey::of(&udp));
        assert_eq!(ku.to_string(), "198.18.1.1:53/udp");
        assert_ne!(s.vip_id(kt), s.vip_id(ku));
        let b = tcp.backends[0].endpoint();
        assert_ne!(s.slot(kt, b), s.slot(ku, b));
        // CLI drain survives a reload that does not touch the backend; a TOML
        // drain edit applies.
        let mut cur = vec![tcp.clone()];
        cur[0].backends[0].state = BackendState::Drain;
        let m = merge(&cur, &[tcp.clone()], &[tcp.clone()]);
        assert_eq!(m[0].backends[0].state, BackendState::Drain);
        let mut edited = tcp.clone();
        edited.backends[0].weight = 3;
        let m = merge(&cur, &[tcp.clone()], &[edited]);
        assert_eq!((m[0].backends[0].state, m[0].backends[0].weight), (BackendState::Drain, 3));
    }

    #[test]
    fn an_old_state_file_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, r#"{"vips":[],"toml_base":[],"vip_ids":{},"slots":{},"generation":3}"#).unwrap();
        let e = State::load(&path).unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("version 1") && e.contains("move the file aside"), "{e}");
        std::fs::write(&path, r#"{"version":4}"#).unwrap();
        assert!(State::load(&path).unwrap_err().to_string().contains("newer"));
        let s = State { vips: vec![Vip::new([198, 18, 1, 1].into(), 80, Mode::Proxy)], ..Default::default() };
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap().unwrap().vips, s.vips);
    }
}

#[cfg(test)]
mod corrupt_tests {
    use super::*;
    use fulcrum_model::Mode;

    /// A valid state file's JSON: one VIP with two backends, ids assigned.
    fn valid() -> serde_json::Value {
        let mut v = Vip::new([198, 18, 1, 1].into(), 80, Mode::Proxy);
        v.backends = vec![Backend::new([198, 18, 0, 21].into(), 8080, 1), Backend::new([198, 18, 0, 22].into(), 8080, 1)];
        let mut s = State { vips: vec![v.clone()], toml_base: vec![v], ..Default::default() };
        s.assign_ids(MAX_VIPS, MAX_BACKENDS).unwrap();
        serde_json::to_value(&s).unwrap()
    }

    /// Writes `bytes` as the state file, loads it: the file must be set aside
    /// with a message naming both paths and containing `want`, the copy
    /// holding exactly `bytes`.
    #[track_caller]
    fn set_aside(bytes: &[u8], want: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, bytes).unwrap();
        let e = State::load(&path).unwrap_err();
        assert!(matches!(e, StateError::Invalid { .. }), "{e}");
        let (message, copy) = match State::load_or_set_aside(&path).unwrap() {
            Loaded::SetAside { message, copy } => (message, copy),
            other => panic!("not set aside: {other:?}"),
        };
        println!("{message}");
        assert!(message.contains(want), "{message:?} should mention {want:?}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(&copy.display().to_string()), "{message}");
        assert!(message.contains("starting from the TOML"), "{message}");
        let name = copy.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("state.json.corrupt-") && name[19..].parse::<u64>().is_ok(), "{name}");
        assert_eq!(copy.parent(), path.parent());
        assert_eq!(std::fs::read(&copy).unwrap(), bytes, "the copy is the file as it was");
        assert!(!path.exists(), "the corrupt file is still in place");
        // Nothing left to load: the daemon starts from the TOML.
        assert!(matches!(State::load_or_set_aside(&path).unwrap(), Loaded::Missing));
    }

    fn json(v: &serde_json::Value) -> Vec<u8> {
        serde_json::to_vec_pretty(v).unwrap()
    }

    #[test]
    fn a_valid_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, json(&valid())).unwrap();
        assert!(matches!(State::load_or_set_aside(&path).unwrap(), Loaded::Found(s) if s.slots.len() == 2));
        assert!(matches!(State::load_or_set_aside(&dir.path().join("none.json")).unwrap(), Loaded::Missing));
    }

    #[test]
    fn a_vip_id_out_of_range_is_set_aside() {
        let mut v = valid();
        v["vip_ids"]["198.18.1.1:80"] = MAX_VIPS.into();
        set_aside(&json(&v), &format!("vip_ids: 198.18.1.1:80: id {MAX_VIPS} out of range"));
    }

    #[test]
    fn a_slot_out_of_range_is_set_aside() {
        let mut v = valid();
        v["slots"]["198.18.1.1:80/198.18.0.22:8080"] = 4_000_000_000u32.into();
        set_aside(&json(&v), "slots: 198.18.1.1:80/198.18.0.22:8080: slot 4000000000 out of range");
    }

    #[test]
    fn a_slot_given_twice_is_set_aside() {
        let mut v = valid();
        v["slots"]["198.18.1.1:80/198.18.0.22:8080"] = 0.into();
        set_aside(&json(&v), "slots: 0 is given to both 198.18.1.1:80/198.18.0.21:8080 and 198.18.1.1:80/198.18.0.22:8080");
        let mut v = valid();
        v["vip_ids"]["198.18.1.9:80"] = 0.into();
        set_aside(&json(&v), "vip_ids: 0 is given to both");
    }

    #[test]
    fn an_invalid_vip_is_set_aside() {
        let mut v = valid();
        v["vips"][0]["connect_tries"] = 0.into();
        set_aside(&json(&v), "vips: vip[0] (198.18.1.1:80).connect_tries");
        let mut v = valid();
        let dup = v["toml_base"][0].clone();
        v["toml_base"].as_array_mut().unwrap().push(dup);
        set_aside(&json(&v), "toml_base: vip[1]");
    }

    #[test]
    fn garbage_is_set_aside() {
        set_aside(b"\x00\xffnot json at all", "not a valid state file (expected value");
        set_aside(b"[1, 2, 3]", "not a JSON object");
        let mut v = valid();
        v["vip_ids"] = "nope".into();
        set_aside(&json(&v), "not a valid state file (invalid type");
    }

    #[test]
    fn a_truncated_file_is_set_aside() {
        let whole = json(&valid());
        set_aside(&whole[..whole.len() / 2], "EOF while parsing");
        set_aside(b"", "EOF while parsing");
    }

    #[test]
    fn another_version_is_still_refused_and_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, r#"{"version":4}"#).unwrap();
        let e = State::load_or_set_aside(&path).unwrap_err().to_string();
        assert!(e.contains("newer"), "{e}");
        assert!(path.exists());
    }
}

#[cfg(test)]
mod rotation_tests {
    use super::*;

    #[test]
    fn out_of_rotation_is_version_3_and_in_rotation_stays_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut s = State::default();
        s.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"version\": 2") && !text.contains("out_of_rotation"),
            "{text}"
        );
        assert!(!State::load(&path).unwrap().unwrap().out_of_rotation);
        s.out_of_rotation = true;
        s.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"version\": 3") && text.contains("\"out_of_rotation\": true"),
            "{text}"
        );
        assert!(State::load(&path).unwrap().unwrap().out_of_rotation);
        // What an older control plane wrote (version 2) loads, in rotation.
        std::fs::write(
            &path,
            r#"{"version":2,"vips":[],"toml_base":[],"vip_ids":{},"slots":{}}"#,
        )
        .unwrap();
        assert!(!State::load(&path).unwrap().unwrap().out_of_rotation);
    }
}
