//! `fulcrum-rawtcp`: a userspace TCP client over an AF_PACKET socket, for
//! handshakes a kernel client cannot make: the SYN goes to one MAC and the rest of
//! the connection to another (two load-balancer instances behind ECMP when a path
//! changes: a kernel client would send everything to one next hop, and would reset
//! a SYN-ACK it did not expect).
//!
//! Run it inside the client's namespace (`ip netns exec`) with a source address no
//! kernel there owns (198.18.0.99 in the test topology) and a made-up MAC: the
//! namespace's kernel then drops what comes back as not its own, neither answering
//! nor resetting it; this client answers ARP requests for its address itself.
//!
//! ```text
//! fulcrum-rawtcp --src 198.18.0.99 --src-mac 02:00:00:00:c0:99 --dst 198.18.1.1 --dport 80
//!     --syn-mac MAC --rest-mac MAC [--iface eth0] [--sport N] [--isn N]
//!     [--announce IP=MAC]... [--request 'GET / HTTP/1.0\r\n\r\n']
//!     [--timeout SECS] [--ack-grace SECS]
//! ```
//!
//! One exchange: SYN (Linux's options) to `--syn-mac`; the SYN-ACK; the ACK to
//! `--rest-mac`; a short wait (`--ack-grace`: a RST to the ACK ends it there); the
//! request in one data segment to `--rest-mac` (resent every 500 ms until
//! acknowledged); every segment of the answer ACKed (to `--rest-mac`) until FIN;
//! FIN answered with FIN-ACK; the last ACK awaited (bounded). `--announce
//! IP=MAC` first sends an ARP request for IP to MAC from the client, so that host
//! learns the client's MAC (as a load balancer knows its router's).
//!
//! Every frame sent and received is logged on stderr; stdout gets one JSON object:
//! `{"end": "fin" | "reset", "synack": {...}, "rst": {...} | null, "received":
//! [...], "response": "...", "arp_answered": [...]}` (segments as `src_mac`,
//! `flags`, `seq`, `ack`, `length`, `options`). Exit status 1 (and the reason on
//! stderr) when anything unexpected arrives or nothing does in time.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fulcrum_tests::rawframe::*;
use fulcrum_tests::serde_json::{json, Value};

/// One exchange to make.
#[derive(Clone, Debug)]
struct Exchange {
    iface: String,
    /// The client's (made-up) MAC and address.
    client_mac: [u8; 6],
    client_ip: Ipv4Addr,
    client_port: u16,
    client_isn: u32,
    vip: Ipv4Addr,
    port: u16,
    /// Where the SYN goes (a dataplane's MAC).
    syn_mac: [u8; 6],
    /// Where the ACK and everything after go.
    rest_mac: [u8; 6],
    /// Hosts to tell about the client first, with an ARP request for their address
    /// sent from the client (`(their address, their MAC)`): they learn the client's
    /// MAC, as a load balancer knows its router's. Empty: nobody is told.
    announce_to: Vec<(Ipv4Addr, [u8; 6])>,
    /// Sent in one data segment after the ACK.
    request: Vec<u8>,
    /// Bound on each wait (SYN-ACK, each answer segment).
    step_timeout: Duration,
    /// How long to wait after the ACK for a RST before sending the request.
    ack_grace: Duration,
}

/// How the exchange ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// The server closed (FIN) after its answer, and the close completed.
    Fin,
    /// A RST arrived (this segment) after the SYN-ACK.
    Reset(TcpIn),
}

#[derive(Clone, Debug)]
struct Outcome {
    synack: TcpIn,
    end: End,
    /// The answer's bytes, in order.
    response: Vec<u8>,
    /// Every TCP segment received for the connection after the SYN-ACK.
    received: Vec<TcpIn>,
    /// ARP requests for the client's address answered: `(asker's address, its MAC)`.
    arp_answered: Vec<(Ipv4Addr, [u8; 6])>,
}

struct Client<'a> {
    ex: &'a Exchange,
    sock: PacketSocket,
    arp_answered: Vec<(Ipv4Addr, [u8; 6])>,
    ip_id: u16,
    t0: Instant,
}

impl Client<'_> {
    fn note(&mut self, s: String) {
        let line = format!("{:>7.1} ms  {s}", self.t0.elapsed().as_secs_f64() * 1e3);
        eprintln!("{line}");
    }

    /// Our TSval: milliseconds since the start, plus an offset.
    fn tsval(&self) -> u32 {
        1_000_000u32.wrapping_add(self.t0.elapsed().as_millis() as u32)
    }

    #[allow(clippy::too_many_arguments)]
    fn send_tcp(&mut self, to: [u8; 6], seq: u32, ack: u32, flags: u8, options: &[u8], payload: &[u8], what: &str) -> Result<(), String> {
        self.ip_id = self.ip_id.wrapping_add(1);
        let f = TcpOut {
            src_mac: self.ex.client_mac,
            dst_mac: to,
            src: self.ex.client_ip,
            dst: self.ex.vip,
            ip_id: self.ip_id,
            sport: self.ex.client_port,
            dport: self.ex.port,
            seq,
            ack,
            flags,
            window: 502,
            options,
            payload,
        }
        .build();
        self.sock.send(&f)?;
        let opts = TcpOptions::parse(options).unwrap_or_default();
        self.note(format!(
            "sent {what}: {}:{} > {}:{} [{}] seq {seq} ack {ack} options {opts} length {} to MAC {}",
            self.ex.client_ip,
            self.ex.client_port,
            self.ex.vip,
            self.ex.port,
            flags_str(flags),
            payload.len(),
            format_mac(&to)
        ));
        Ok(())
    }

    /// NOP NOP TS(tsval, tsecr).
    fn ts_options(&self, tsecr: u32) -> [u8; 12] {
        let mut o = [1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0];
        o[4..8].copy_from_slice(&self.tsval().to_be_bytes());
        o[8..12].copy_from_slice(&tsecr.to_be_bytes());
        o
    }

    /// The next segment of our connection before `deadline` (ARP requests for our
    /// address answered on the way; other frames ignored).
    fn next_segment(&mut self, deadline: Instant) -> Result<Option<TcpIn>, String> {
        loop {
            let Some(f) = self.sock.recv_until(deadline)? else {
                return Ok(None);
            };
            match parse_frame(&f) {
                Some(Parsed::Arp(a)) if !a.reply && a.target_ip == self.ex.client_ip => {
                    let r = arp_frame(true, a.sender_mac, self.ex.client_mac, self.ex.client_ip, a.sender_mac, a.sender_ip);
                    self.sock.send(&r)?;
                    self.arp_answered.push((a.sender_ip, a.sender_mac));
                    self.note(format!(
                        "ARP who-has {} tell {} (MAC {}): answered",
                        a.target_ip,
                        a.sender_ip,
                        format_mac(&a.sender_mac)
                    ));
                }
                Some(Parsed::Arp(a)) if a.reply && a.target_ip == self.ex.client_ip => {
                    self.note(format!("ARP reply: {} is at {}", a.sender_ip, format_mac(&a.sender_mac)));
                }
                Some(Parsed::Tcp(t))
                    if t.dst == self.ex.client_ip
                        && t.dport == self.ex.client_port
                        && t.src == self.ex.vip
                        && t.sport == self.ex.port =>
                {
                    self.note(format!("got {t}"));
                    if !t.checksums_ok {
                        return Err(format!("segment with a bad checksum: {t}"));
                    }
                    return Ok(Some(t));
                }
                _ => {}
            }
        }
    }

    fn run(&mut self) -> Result<Outcome, String> {
        let ex = self.ex;
        for &(ip, mac) in &ex.announce_to {
            let f = arp_frame(false, mac, ex.client_mac, ex.client_ip, [0; 6], ip);
            self.sock.send(&f)?;
            self.note(format!("ARP who-has {ip} tell {} sent to MAC {}", ex.client_ip, format_mac(&mac)));
        }
        if !ex.announce_to.is_empty() {
            // Their replies (logged), and time for them to learn.
            let _ = self.next_segment(Instant::now() + Duration::from_millis(200))?;
        }

        // SYN.
        let mut syn_opts = LINUX_SYN_OPTIONS;
        let ts0 = self.tsval();
        syn_opts[SYN_TSVAL_OFFSET..SYN_TSVAL_OFFSET + 4].copy_from_slice(&ts0.to_be_bytes());
        self.ip_id = (ex.client_isn >> 16) as u16;
        self.send_tcp(ex.syn_mac, ex.client_isn, 0, SYN, &syn_opts, &[], "SYN")?;
        let synack = self
            .next_segment(Instant::now() + ex.step_timeout)?
            .ok_or_else(|| format!("no SYN-ACK within {:?}", ex.step_timeout))?;
        let iss = ex.client_isn.wrapping_add(1);
        if !synack.has(SYN | ACK) || synack.has(RST) || synack.ack != iss {
            return Err(format!("expected a SYN-ACK acknowledging {iss}, got {synack}"));
        }
        let peer_ts = |t: &TcpIn| t.options.timestamp.map_or(0, |(v, _)| v);
        let mut ts_recent = peer_ts(&synack);
        let mut rcv_nxt = synack.seq.wrapping_add(1);
        // What the server has acknowledged of ours.
        let mut snd_una = iss;

        // ACK, to the other MAC; a RST to it ends the exchange.
        let opts = self.ts_options(ts_recent);
        self.send_tcp(ex.rest_mac, iss, rcv_nxt, ACK, &opts, &[], "ACK")?;
        let mut received = Vec::new();
        if let Some(t) = self.next_segment(Instant::now() + ex.ack_grace)? {
            received.push(t.clone());
            if t.has(RST) {
                return Ok(self.outcome(synack, End::Reset(t), Vec::new(), received));
            }
            return Err(format!("unexpected answer to the ACK: {t}"));
        }

        // The request; resent (bounded) until acknowledged.
        let opts = self.ts_options(ts_recent);
        self.send_tcp(ex.rest_mac, iss, rcv_nxt, PSH | ACK, &opts, &ex.request, "request")?;
        let req_end = iss.wrapping_add(ex.request.len() as u32);
        let mut acked = false;
        let mut response = Vec::new();
        let mut resend_at = Instant::now() + Duration::from_millis(500);
        let step_deadline = |d: Duration| Instant::now() + d;
        let mut deadline = step_deadline(ex.step_timeout);
        loop {
            let wait_until = if acked { deadline } else { deadline.min(resend_at) };
            let Some(t) = self.next_segment(wait_until)? else {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "nothing for {:?} (request acknowledged: {acked}, {} answer bytes so far)",
                        ex.step_timeout,
                        response.len()
                    ));
                }
                let opts = self.ts_options(ts_recent);
                self.send_tcp(ex.rest_mac, iss, rcv_nxt, PSH | ACK, &opts, &ex.request, "request (again)")?;
                resend_at = Instant::now() + Duration::from_millis(500);
                continue;
            };
            deadline = step_deadline(ex.step_timeout);
            received.push(t.clone());
            if t.has(RST) {
                return Ok(self.outcome(synack, End::Reset(t), response, received));
            }
            if t.has(SYN) {
                return Err(format!("unexpected SYN after the handshake: {t}"));
            }
            if t.has(ACK) && t.ack.wrapping_sub(snd_una) as i32 > 0 && t.ack.wrapping_sub(req_end) as i32 <= 0 {
                snd_una = t.ack;
            }
            acked |= snd_una == req_end;
            if t.seq == rcv_nxt && t.seg_len() > 0 {
                response.extend_from_slice(&t.payload);
                rcv_nxt = rcv_nxt.wrapping_add(t.seg_len());
                ts_recent = peer_ts(&t);
            }
            if t.seg_len() == 0 {
                continue;
            }
            // Data or FIN (in order or not): acknowledge what we have.
            let fin = t.has(FIN) && t.seq.wrapping_add(t.seg_len()) == rcv_nxt;
            let opts = self.ts_options(ts_recent);
            if fin {
                self.send_tcp(ex.rest_mac, req_end, rcv_nxt, FIN | ACK, &opts, &[], "FIN (answering theirs)")?;
                let our_fin_end = req_end.wrapping_add(1);
                // Their last ACK (bounded; its absence is only logged).
                let d = Instant::now() + ex.step_timeout;
                loop {
                    match self.next_segment(d)? {
                        None => {
                            self.note("no ACK of our FIN".into());
                            break;
                        }
                        Some(a) if a.has(RST) => return Ok(self.outcome(synack, End::Reset(a), response, received)),
                        Some(a) if a.has(ACK) && a.ack == our_fin_end => {
                            received.push(a);
                            break;
                        }
                        Some(a) => received.push(a),
                    }
                }
                return Ok(self.outcome(synack, End::Fin, response, received));
            }
            self.send_tcp(ex.rest_mac, req_end, rcv_nxt, ACK, &opts, &[], "ACK")?;
        }
    }

    fn outcome(&mut self, synack: TcpIn, end: End, response: Vec<u8>, received: Vec<TcpIn>) -> Outcome {
        Outcome { synack, end, response, received, arp_answered: self.arp_answered.clone() }
    }
}

/// Makes the exchange. Every line of the log goes to stderr as it happens.
fn run(ex: &Exchange) -> Result<Outcome, String> {
    let sock = PacketSocket::open(&ex.iface)?;
    let mut c = Client { ex, sock, arp_answered: Vec::new(), ip_id: 0, t0: Instant::now() };
    c.run()
}

fn segment_json(t: &TcpIn) -> Value {
    json!({
        "src_mac": format_mac(&t.src_mac),
        "flags": flags_str(t.flags),
        "seq": t.seq,
        "ack": t.ack,
        "window": t.window,
        "length": t.payload.len(),
        "options": t.options.to_string(),
    })
}

fn outcome_json(o: &Outcome) -> Value {
    let (end, rst) = match &o.end {
        End::Fin => ("fin", Value::Null),
        End::Reset(t) => ("reset", segment_json(t)),
    };
    json!({
        "end": end,
        "synack": segment_json(&o.synack),
        "rst": rst,
        "received": o.received.iter().map(segment_json).collect::<Vec<_>>(),
        "response": String::from_utf8_lossy(&o.response),
        "arp_answered": o.arp_answered.iter().map(|(ip, mac)| format!("{ip} {}", format_mac(mac))).collect::<Vec<_>>(),
    })
}

// ---------------------------------------------------------------------------- arguments

const USAGE: &str = "usage: fulcrum-rawtcp --src IP --src-mac MAC --dst IP --dport PORT --syn-mac MAC \
                     --rest-mac MAC [--iface eth0] [--sport N] [--isn N] [--announce IP=MAC]... \
                     [--request TEXT] [--timeout SECS] [--ack-grace SECS]";

fn unescape(s: &str) -> String {
    s.replace("\\r", "\r").replace("\\n", "\n")
}

fn parse_args() -> Result<Exchange, String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut ex = Exchange {
        iface: "eth0".into(),
        client_mac: [0; 6],
        client_ip: Ipv4Addr::UNSPECIFIED,
        client_port: 40000 + (now.subsec_micros() % 20000) as u16,
        client_isn: (now.as_nanos() as u32).rotate_left(13) ^ std::process::id(),
        vip: Ipv4Addr::UNSPECIFIED,
        port: 0,
        syn_mac: [0; 6],
        rest_mac: [0; 6],
        announce_to: Vec::new(),
        request: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        step_timeout: Duration::from_secs(5),
        ack_grace: Duration::from_millis(300),
    };
    let secs = |v: String, flag: &str| -> Result<Duration, String> {
        let s: f64 = v.parse().map_err(|e| format!("{flag}: {e}"))?;
        Duration::try_from_secs_f64(s).map_err(|e| format!("{flag}: {e}"))
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--iface" => ex.iface = val()?,
            "--src" => ex.client_ip = val()?.parse().map_err(|e| format!("--src: {e}"))?,
            "--src-mac" => ex.client_mac = parse_mac(&val()?)?,
            "--sport" => ex.client_port = val()?.parse().map_err(|e| format!("--sport: {e}"))?,
            "--isn" => ex.client_isn = val()?.parse().map_err(|e| format!("--isn: {e}"))?,
            "--dst" => ex.vip = val()?.parse().map_err(|e| format!("--dst: {e}"))?,
            "--dport" => ex.port = val()?.parse().map_err(|e| format!("--dport: {e}"))?,
            "--syn-mac" => ex.syn_mac = parse_mac(&val()?)?,
            "--rest-mac" => ex.rest_mac = parse_mac(&val()?)?,
            "--announce" => {
                let v = val()?;
                let (ip, mac) = v.split_once('=').ok_or_else(|| format!("--announce IP=MAC: {v:?}"))?;
                ex.announce_to.push((ip.parse().map_err(|e| format!("--announce: {e}"))?, parse_mac(mac)?));
            }
            "--request" => ex.request = unescape(&val()?).into_bytes(),
            "--timeout" => ex.step_timeout = secs(val()?, "--timeout")?,
            "--ack-grace" => ex.ack_grace = secs(val()?, "--ack-grace")?,
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    if ex.client_ip.is_unspecified() || ex.vip.is_unspecified() || ex.port == 0 {
        return Err(format!("--src, --dst and --dport are required\n{USAGE}"));
    }
    if ex.client_mac == [0; 6] || ex.syn_mac == [0; 6] || ex.rest_mac == [0; 6] {
        return Err(format!("--src-mac, --syn-mac and --rest-mac are required\n{USAGE}"));
    }
    Ok(ex)
}

fn main() -> ExitCode {
    let ex = match parse_args() {
        Ok(ex) => ex,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&ex) {
        Ok(o) => {
            println!("{}", outcome_json(&o));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rawtcp: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------- socket

/// An AF_PACKET raw socket bound to one interface that sends and receives every
/// frame (ETH_P_ALL; frames it sent itself are skipped on receive).
struct PacketSocket {
    fd: libc::c_int,
    ifindex: i32,
}

impl PacketSocket {
    fn open(iface: &str) -> Result<PacketSocket, String> {
        let name = std::ffi::CString::new(iface).map_err(|_| "bad interface name".to_string())?;
        // SAFETY: `name` is a valid NUL-terminated string for the call's duration.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(format!("no interface {iface}: {}", std::io::Error::last_os_error()));
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) };
        if fd < 0 {
            return Err(format!("socket(AF_PACKET): {}", std::io::Error::last_os_error()));
        }
        let sock = PacketSocket { fd, ifindex: ifindex as i32 };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = sock.ifindex;
        // SAFETY: `sll` is a valid sockaddr_ll and its exact size is passed.
        let rc = unsafe {
            libc::bind(fd, std::ptr::from_ref(&sll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t)
        };
        if rc != 0 {
            return Err(format!("bind({iface}): {}", std::io::Error::last_os_error()));
        }
        Ok(sock)
    }

    fn send(&self, frame: &[u8]) -> Result<(), String> {
        // SAFETY: `frame` is valid for reads of its length during the call.
        let n = unsafe { libc::send(self.fd, frame.as_ptr().cast(), frame.len(), 0) };
        if n != frame.len() as isize {
            return Err(format!("send ({} bytes): {}", frame.len(), std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The next frame received (not one this host sent) before `deadline`; `None`
    /// at the deadline.
    fn recv_until(&self, deadline: Instant) -> Result<Option<Vec<u8>>, String> {
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll: {e}"));
            }
            if rc == 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain data.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are valid for writes of the sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    std::ptr::from_mut(&mut from).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
                    continue;
                }
                return Err(format!("recvfrom: {e}"));
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Ok(Some(buf[..n as usize].to_vec()));
        }
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor and close it once.
        unsafe { libc::close(self.fd) };
    }
}

