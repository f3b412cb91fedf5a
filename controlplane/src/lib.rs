//! Fulcrum's control plane: the desired configuration (TOML plus `fulcrumctl`
//! changes, persisted), health checks, publication of whole generations to the
//! dataplane through shared memory, the control socket and Prometheus metrics.
//! A VIP is [`fulcrum_model::Vip`] throughout: in the file, the state file, the
//! control socket and the published [`fulcrum_model::Generation`].
#![forbid(unsafe_code)]
pub mod health;
pub mod announce;
pub mod checks;
pub mod config;
pub mod daemon;
pub mod inputs;
pub mod metrics;
pub mod proto;
pub mod publish;
pub mod segment;
pub mod segment_counters;
pub mod state;

/// Opens the shared-memory segment the daemon publishes to.
pub fn open_segment(path: &std::path::Path) -> Result<Box<dyn publish::Segment>, String> {
    segment::open(path)
}
