//! The Fulcrum control plane daemon.
#![forbid(unsafe_code)]

use clap::Parser;
use std::path::PathBuf;

/// Fulcrum control plane: health checks, configuration published to the
/// dataplane through shared memory, the control socket for fulcrumctl and
/// Prometheus metrics.
///
/// SIGHUP re-reads the configuration file and applies only the difference;
/// SIGTERM or SIGINT stop the daemon.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The TOML configuration file (`[controlplane]` and `[[vip]]` tables).
    #[arg(short, long, default_value = "/etc/fulcrum/controlplane.toml")]
    config: PathBuf,
}

fn main() {
    let args = Args::parse();
    let code = fulcrum_controlplane::daemon::run(&args.config, fulcrum_controlplane::open_segment);
    std::process::exit(code);
}
