//! The veth pair behind the `af_packet` and `af_xdp` software devices.
//!
//! Invariants:
//! * The dataplane creates the pair in its own network namespace before EAL
//!   probes the device, and deletes it when [`Veth`] drops (after the port is
//!   closed). The kernel side has the operator's name, exactly where net_tap
//!   would have put a tap, so `scripts/topology.sh attach` handles both alike;
//!   the DPDK side is `<name>-d` ([`crate::config::veth_peer_name`]).
//! * The kernel side is brought up only once the DPDK port is started
//!   ([`Veth::port_started`]): "up" means "the dataplane is receiving", as
//!   it does for a tap (net_tap sets its interface up in `rte_eth_dev_start`).
//! * The kernel side transmits finished frames only: transmit checksum
//!   offload, TSO and GSO are off on it, and GRO is off on the DPDK side.
//!   Why: a veth passes an skb to its peer as it is. A kernel TCP stack on
//!   the bridge (the clients, the backends) hands its segments down with
//!   CHECKSUM_PARTIAL (the TCP checksum field holds only the pseudo-header
//!   sum, to be finished by "hardware") and, with TSO, as 64 KiB super-frames;
//!   through the bridge and our veth they reach AF_PACKET's ring (and XDP) in
//!   that state, and DPDK's af_packet PMD ignores TP_STATUS_CSUMNOTREADY and
//!   truncates to its frame size. With the offloads off on the interface the
//!   kernel transmits into, `validate_xmit_skb` finishes checksums and
//!   segments before the veth hands the frame over. (A segment that
//!   still arrives unfinished is dropped and counted,
//!   `proxy.drop_bad_checksum`; a SYN before admission.)
//! * The pair goes with the process, as a tap does, however it ends: a
//!   watcher (`sh`, in its own process group) holds a pipe from us and deletes
//!   the pair when the pipe closes without the word `done`, i.e. when the
//!   dataplane died without running [`Veth`]'s drop (SIGKILL, abort). A clean
//!   exit deletes the pair itself and then sends `done`.
//! * af_packet: frames reaching the DPDK side go no further than the packet
//!   taps: the side's kernel MAC differs from the port's, so the kernel's own
//!   stack drops them at once instead of routing them ([`Veth::port_started`]).
//! * Only `ip` and `ethtool` are run, on these two interfaces; nothing else of
//!   the host is touched.

use crate::config::SoftDevice;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// A failure to set up or remove the pair, naming the command.
#[derive(Debug, thiserror::Error)]
pub enum VethError {
    #[error("`{command}` could not run: {source} (scripts/setup.sh installs iproute2 and ethtool)")]
    Spawn { command: String, source: std::io::Error },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error(
        "interface {0} already exists and is not the kernel side of a veth this dataplane left behind \
         (no {1} beside it): choose another name, or remove it"
    )]
    NameTaken(String, String),
}

/// A veth pair owned by this process; deleted on drop.
#[derive(Debug)]
pub struct Veth {
    kernel: String,
    dpdk: String,
    /// Deletes the pair if we die without dropping this (see the module docs).
    watcher: Option<Child>,
}

/// Runs `program args`, returning stdout, or a typed error with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, VethError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| VethError::Spawn { command: command.clone(), source })?;
    if !out.status.success() {
        return Err(VethError::Failed { command, stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn exists(iface: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(iface).exists()
}

/// Offloads turned off on the kernel side (see the module docs): what the
/// kernel must finish before a frame crosses the veth. `tx off` takes TSO
/// with it (TSO needs checksum offload); GSO and the UDP/SCTP variants are
/// named too, so no super-frame is left to the veth.
const KERNEL_SIDE_OFF: &[&str] = &["tx", "off", "tso", "off", "gso", "off", "gro", "off"];
/// Offloads turned off on the DPDK side: no GRO (frames reach the ring one by
/// one, as sent), no transmit offloads (ours carry full checksums anyway).
const DPDK_SIDE_OFF: &[&str] = &["gro", "off", "tx", "off", "tso", "off", "gso", "off"];

impl Veth {
    /// Creates the pair for `device` (`None` for a tap or a vdev): `queues`
    /// queue pairs each side, the DPDK side's MAC set to `mac` if given,
    /// offloads as in the module docs, the DPDK side up, the kernel side down.
    /// A pair of the same names left by a dataplane that was killed is removed
    /// first (its DPDK side exists here: no live dataplane can be using it,
    /// since two cannot share one device).
    pub fn create(device: &SoftDevice, queues: usize, mac: Option<[u8; 6]>, mtu: u16) -> Result<Option<Veth>, VethError> {
        let Some((kernel, dpdk)) = device.veth() else {
            return Ok(None);
        };
        if exists(&dpdk) {
            tracing::warn!("{dpdk}: a veth left behind by an earlier dataplane; removing it");
            run("ip", &["link", "delete", &dpdk])?;
        }
        if exists(kernel) {
            return Err(VethError::NameTaken(kernel.to_owned(), dpdk));
        }
        let q = queues.to_string();
        run(
            "ip",
            &[
                "link", "add", kernel, "numtxqueues", &q, "numrxqueues", &q, "type", "veth", "peer", "name", &dpdk,
                "numtxqueues", &q, "numrxqueues", &q,
            ],
        )?;
        // From here on, Drop removes the pair if anything fails.
        let mut veth = Veth { kernel: kernel.to_owned(), dpdk, watcher: None };
        veth.watcher = Some(spawn_watcher(&veth.dpdk)?);
        if let Some(m) = mac {
            run("ip", &["link", "set", "dev", &veth.dpdk, "address", &crate::config::mac_text(m)])?;
        }
        let mtu = mtu.to_string();
        for side in [&veth.kernel, &veth.dpdk] {
            run("ip", &["link", "set", "dev", side, "mtu", &mtu])?;
        }
        veth.ethtool_off(&veth.kernel, KERNEL_SIDE_OFF)?;
        veth.ethtool_off(&veth.dpdk, DPDK_SIDE_OFF)?;
        // No IPv6 on either side: no router solicitations or MLD reports from
        // the kernel into the dataplane (errors ignored: IPv6 may be absent).
        for side in [&veth.kernel, &veth.dpdk] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{side}/disable_ipv6"), "1");
        }
        run("ip", &["link", "set", "dev", &veth.dpdk, "up"])?;
        tracing::info!(
            "veth {} (kernel side, down until the port starts) / {} (DPDK side): {q} queue pair(s), mtu {mtu}, \
             kernel side's transmit checksum/TSO/GSO offloads off",
            veth.kernel,
            veth.dpdk
        );
        Ok(Some(veth))
    }

    /// `ethtool -K iface <features>`; then checks that what the kernel
    /// side must not offload is really off (`ethtool -k`), since a driver
    /// may refuse a change without failing the command.
    fn ethtool_off(&self, iface: &str, features: &[&str]) -> Result<(), VethError> {
        let mut args = vec!["-K", iface];
        args.extend_from_slice(features);
        run("ethtool", &args)?;
        let shown = run("ethtool", &["-k", iface])?;
        for name in ["tx-checksumming", "tcp-segmentation-offload", "generic-segmentation-offload"] {
            let on = shown.lines().any(|l| l.trim_start().starts_with(&format!("{name}: on")));
            if on && iface == self.kernel {
                return Err(VethError::Failed {
                    command: format!("ethtool -K {iface} {}", features.join(" ")),
                    stderr: format!("{name} is still on"),
                });
            }
        }
        Ok(())
    }

    /// Once the port has started: af_packet only, the DPDK side's kernel MAC
    /// is changed to one the port does not use (the PMD read the port's at
    /// probe and keeps it). Why: an AF_PACKET socket gets a copy of each
    /// frame, and the frame itself goes on into the kernel's own stack on the
    /// DPDK side, on the CPU of whoever sent it; addressed to the interface's
    /// own MAC it would be routed (and refused: not ours, no forwarding),
    /// addressed to another MAC it is PACKET_OTHERHOST and `ip_rcv` drops it
    /// first thing. (XDP's redirect to an AF_XDP socket consumes the frame.)
    pub fn port_started(&self, device: &SoftDevice, port_mac: [u8; 6]) -> Result<(), VethError> {
        if matches!(device, SoftDevice::AfPacket(_)) {
            let mut other = port_mac;
            other[5] ^= 0x01;
            run("ip", &["link", "set", "dev", &self.dpdk, "address", &crate::config::mac_text(other)])?;
        }
        self.kernel_side_up()
    }

    /// Brings the kernel side up.
    fn kernel_side_up(&self) -> Result<(), VethError> {
        run("ip", &["link", "set", "dev", &self.kernel, "up"]).map(drop)
    }

}

/// The watcher: `sh` reading one line from a pipe only we hold; anything but
/// `done` (EOF: we are gone) makes it delete `dpdk_side`. Own process group:
/// a signal to ours (Ctrl-C in a terminal) does not reach it first.
fn spawn_watcher(dpdk_side: &str) -> Result<Child, VethError> {
    let script = format!("read -r word; [ \"$word\" = done ] || exec ip link delete dev {dpdk_side} 2>/dev/null");
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|source| VethError::Spawn { command: format!("sh -c '{script}'"), source })
}

impl Drop for Veth {
    /// Deleting one side deletes both, wherever the kernel side was moved to;
    /// then the watcher is told it is done.
    fn drop(&mut self) {
        match run("ip", &["link", "delete", "dev", &self.dpdk]) {
            Ok(_) => tracing::info!("veth {}/{} removed", self.kernel, self.dpdk),
            Err(e) => tracing::warn!("removing veth {}/{}: {e}", self.kernel, self.dpdk),
        }
        if let Some(mut w) = self.watcher.take() {
            if let Some(mut pipe) = w.stdin.take() {
                let _ = pipe.write_all(b"done\n");
            }
            let _ = w.wait();
        }
    }
}
