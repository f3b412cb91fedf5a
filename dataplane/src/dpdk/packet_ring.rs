//! The kernel's own counters of the af_packet PMD's receive rings.
//!
//! When a TPACKET_V2 RX ring is full the kernel drops the frame and counts
//! it only in its packet socket's `PACKET_STATISTICS` (`tp_drops`); DPDK
//! 22.11's af_packet PMD never reads them, so `imissed` stays 0 and such
//! drops were invisible. [`RxRings`] finds the PMD's sockets and reads them.
//!
//! Invariants:
//! * The sockets are found in-process, not through `/proc/net/packet`: every
//!   descriptor of `/proc/self/fd` that is a socket is duplicated
//!   (`F_DUPFD_CLOEXEC`) and kept if it is an AF_PACKET socket whose bound
//!   interface (`getsockname`, `sll_ifindex`) is the DPDK side of the veth.
//!   The check is made on our duplicate, so a descriptor the PMD closed and
//!   something else reused in between is judged as what it now is. Only
//!   the PMD opens packet sockets in this process.
//! * We own duplicates: reading never touches the PMD's descriptors, and a
//!   closed port cannot leave us reading a stranger's socket.
//! * Queue order: the PMD opens one socket per queue pair, in queue order,
//!   each taking the lowest free descriptor; sorted by descriptor number,
//!   socket `i` is queue `i`'s.
//! * `getsockopt(PACKET_STATISTICS)` returns the counts since the last read
//!   and resets them, so exactly one owner reads ([`RxRings::take`] takes
//!   `&mut self`) and the caller accumulates. For TPACKET_V1/V2 the kernel
//!   returns `tp_packets` with `tp_drops` already added: frames offered to
//!   the ring, delivered or dropped.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// What a ring's socket counted since the previous read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingCounts {
    /// Frames the kernel offered to the ring: delivered or dropped (`tp_packets`).
    pub frames: u64,
    /// Of those, dropped because the ring was full (`tp_drops`).
    pub drops: u64,
}

/// Why the rings could not be found or read.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("interface {0}: no such interface")]
    NoInterface(String),
    #[error("listing /proc/self/fd: {0}")]
    ListFds(std::io::Error),
    #[error("no AF_PACKET socket of this process is bound to {0} (is the port an af_packet one, and started?)")]
    NoSockets(String),
    #[error("reading PACKET_STATISTICS: {0}")]
    Read(std::io::Error),
}

/// The af_packet PMD's packet sockets on one interface, one per queue, in
/// queue order (see the module docs).
#[derive(Debug)]
pub struct RxRings {
    sockets: Vec<OwnedFd>,
}

impl RxRings {
    /// Finds this process's AF_PACKET sockets bound to `iface` (the DPDK
    /// side of the veth, after the port started).
    pub fn find(iface: &str) -> Result<RxRings, RingError> {
        let name = CString::new(iface).map_err(|_| RingError::NoInterface(iface.to_owned()))?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(RingError::NoInterface(iface.to_owned()));
        }
        let mut found: Vec<(i32, OwnedFd)> = Vec::new();
        for entry in std::fs::read_dir("/proc/self/fd").map_err(RingError::ListFds)? {
            let Ok(entry) = entry else { continue };
            let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
            if !is_socket {
                continue;
            }
            if let Some(dup) = duplicate(fd).filter(|d| bound_packet_socket(d) == Some(ifindex as i32)) {
                found.push((fd, dup));
            }
        }
        if found.is_empty() {
            return Err(RingError::NoSockets(iface.to_owned()));
        }
        found.sort_by_key(|(fd, _)| *fd);
        Ok(RxRings { sockets: found.into_iter().map(|(_, d)| d).collect() })
    }

    /// Sockets found: the port's queue pairs.
    pub fn queues(&self) -> usize {
        self.sockets.len()
    }

    /// Reads (and so resets: see the module docs) every queue's counts since
    /// the previous call, in queue order.
    pub fn take(&mut self) -> Result<Vec<RingCounts>, RingError> {
        self.sockets.iter().map(|s| read_stats(s).map_err(RingError::Read)).collect()
    }
}

/// A close-on-exec duplicate of `fd`, or `None` if it is no longer open.
fn duplicate(fd: i32) -> Option<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only creates a new descriptor (or fails with
    // EBADF); it does not affect `fd` itself, whoever owns it.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    // SAFETY: on success `dup` is a fresh descriptor that nothing else owns.
    (dup >= 0).then(|| unsafe { OwnedFd::from_raw_fd(dup) })
}

/// The interface index an AF_PACKET socket is bound to; `None` for any
/// other descriptor.
fn bound_packet_socket(fd: &OwnedFd) -> Option<i32> {
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `domain` and `len` are valid out-parameters of the sizes given.
    let r = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN, (&raw mut domain).cast(), &mut len)
    };
    if r != 0 || domain != libc::AF_PACKET {
        return None;
    }
    // SAFETY: sockaddr_ll is plain old data; all zeros is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `addr` is a sockaddr_ll-sized buffer and `len` says so.
    let r = unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut addr).cast(), &mut len) };
    (r == 0 && i32::from(addr.sll_family) == libc::AF_PACKET).then_some(addr.sll_ifindex)
}

/// `getsockopt(SOL_PACKET, PACKET_STATISTICS)`: the counts since the last
/// read, which it resets.
fn read_stats(fd: &OwnedFd) -> std::io::Result<RingCounts> {
    let mut st = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: `st` is a tpacket_stats (what TPACKET_V1/V2 sockets return)
    // and `len` its size; the kernel writes at most `len` bytes.
    let r = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_STATISTICS, (&raw mut st).cast(), &mut len)
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(RingCounts { frames: u64::from(st.tp_packets), drops: u64::from(st.tp_drops) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On loopback (no root needed beyond CAP_NET_RAW, which the test
    /// suite has): a packet socket bound to `lo` is found and its counts read;
    /// a socket of another domain is not.
    #[test]
    fn finds_a_packet_socket_bound_to_an_interface() {
        // SAFETY: plain socket creation; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from((libc::ETH_P_ALL as u16).to_be())) };
        if raw < 0 {
            eprintln!("skipped: no CAP_NET_RAW ({})", std::io::Error::last_os_error());
            return;
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let lo = CString::new("lo").unwrap();
        // SAFETY: NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(lo.as_ptr()) } as i32;
        // SAFETY: all-zero sockaddr_ll is valid; filled in below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is a valid sockaddr_ll of the given size.
        let r = unsafe {
            libc::bind(sock.as_raw_fd(), (&raw const addr).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32)
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut rings = RxRings::find("lo").unwrap();
        assert_eq!(rings.queues(), 1, "only our packet socket is bound to lo");
        assert_eq!(bound_packet_socket(&duplicate(udp.as_raw_fd()).unwrap()), None);
        // A datagram over loopback is a frame the packet socket sees.
        udp.send_to(b"x", udp.local_addr().unwrap()).unwrap();
        let counts = rings.take().unwrap();
        assert!(counts[0].frames >= 1, "{counts:?}");
        assert!(matches!(RxRings::find("no-such-if0"), Err(RingError::NoInterface(_))));
    }
}
