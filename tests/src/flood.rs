//! Flood tooling for the integration tests: the `fulcrum-synflood` generator run
//! from the outside client P-out (sources spoofed in [`SPOOF_PREFIX`], which the
//! router blackholes), packet counts by tcpdump's filter statistics, and iperf3's
//! per-second intervals.

use std::time::Duration;

use crate::{bin_dir, describe, wait_until, Guarded, Topology, Value, ROUTER_OUTSIDE_IP};

/// The prefix flood sources are spoofed from (blackholed at P-rtr by
/// `scripts/topology.sh`).
pub const SPOOF_PREFIX: &str = "198.19.128.0/17";

/// Path of the `fulcrum-synflood` binary (see [`bin_dir`]).
pub fn synflood_bin() -> std::path::PathBuf {
    bin_dir().join("fulcrum-synflood")
}

/// What to send.
#[derive(Clone, Debug)]
pub struct FloodSpec {
    /// `"syn"` or `"ack"`.
    pub mode: &'static str,
    pub dst: String,
    pub dport: u16,
    /// Packets per second; 0: as fast as possible.
    pub rate: u64,
    pub duration: Duration,
}

/// What the generator reported on exit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FloodResult {
    pub sent: u64,
    pub seconds: f64,
    pub pps: f64,
    pub send_errors: u64,
}

/// Parses `synflood mode=syn sent=N seconds=S pps=P send_errors=E`.
pub fn parse_flood_line(text: &str) -> Option<FloodResult> {
    let line = text.lines().find(|l| l.starts_with("synflood mode="))?;
    let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)?.strip_prefix('='));
    Some(FloodResult {
        sent: field("sent")?.parse().ok()?,
        seconds: field("seconds")?.parse().ok()?,
        pps: field("pps")?.parse().ok()?,
        send_errors: field("send_errors")?.parse().ok()?,
    })
}

/// A running flood from P-out (killed on drop).
pub struct Flood {
    proc: Guarded,
    spec: FloodSpec,
}

impl Flood {
    /// Starts `fulcrum-synflood` in P-out, towards the router's MAC (resolved by
    /// the generator from the neighbour table), sources random in [`SPOOF_PREFIX`].
    pub fn start(topo: &Topology, spec: FloodSpec) -> Flood {
        let bin = synflood_bin();
        assert!(bin.is_file(), "{} not found: build it with `cargo build --release --workspace`", bin.display());
        let rate = spec.rate.to_string();
        let secs = format!("{:.3}", spec.duration.as_secs_f64());
        let port = spec.dport.to_string();
        let mode = format!("--{}", spec.mode);
        let proc = topo.spawn(
            "out",
            &[
                bin.to_str().expect("utf-8 path"),
                &mode,
                "--gateway",
                ROUTER_OUTSIDE_IP,
                "--src",
                SPOOF_PREFIX,
                "--dst",
                &spec.dst,
                "--dport",
                &port,
                "--rate",
                &rate,
                "--duration",
                &secs,
            ],
        );
        Flood { proc, spec }
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Waits for the generator to finish (its duration plus `slack`) and returns
    /// its result; panics with its output if it failed.
    pub fn finish(mut self, slack: Duration) -> FloodResult {
        let status = self.proc.wait_timeout(self.spec.duration + slack);
        let out = self.proc.output();
        let r = parse_flood_line(&out);
        match (status, r) {
            (Some(s), Some(r)) if s.success() => r,
            _ => panic!("fulcrum-synflood {:?} failed ({status:?}):\n{out}", self.spec),
        }
    }
}

// ---------------------------------------------------------------------------- counting

/// `tcpdump -i IFACE -n -w /dev/null FILTER` in a namespace, stopped with SIGINT:
/// counts the packets its filter matched (tcpdump's "packets received by filter",
/// which includes any the capture buffer dropped).
pub struct FilterCount {
    proc: Guarded,
    pub leaf: String,
    pub iface: String,
}

impl FilterCount {
    /// Starts the capture; waits until tcpdump listens.
    pub fn start(topo: &Topology, leaf: &str, iface: &str, filter: &str) -> FilterCount {
        let mut args = vec!["tcpdump", "-i", iface, "-n", "-w", "/dev/null"];
        args.extend(filter.split_whitespace());
        let proc = topo.spawn(leaf, &args);
        let fc = FilterCount { proc, leaf: leaf.to_string(), iface: iface.to_string() };
        wait_until(Duration::from_secs(10), &format!("tcpdump in {leaf} on {iface} to listen"), || {
            fc.proc.output().contains("listening on")
        });
        fc
    }

    /// SIGINT, wait (bounded) and return the count.
    pub fn stop(mut self) -> u64 {
        self.proc.signal(crate::Signal::SIGINT);
        let status = self.proc.wait_timeout(Duration::from_secs(10));
        let out = self.proc.output();
        out.lines()
            .find_map(|l| l.strip_suffix(" packets received by filter")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("tcpdump in {} on {} ({status:?}) printed no count:\n{out}", self.leaf, self.iface))
    }
}

// ---------------------------------------------------------------------------- iperf3

/// One iperf3 interval: start (seconds from the test's start), bytes, bits/s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub start: f64,
    pub bytes: u64,
    pub bps: f64,
}

/// The per-interval sums of an iperf3 `-J` result (`intervals[].sum`).
pub fn iperf3_intervals(v: &Value) -> Vec<Interval> {
    v["intervals"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| Interval {
                    start: i["sum"]["start"].as_f64().unwrap_or(f64::NAN),
                    bytes: i["sum"]["bytes"].as_u64().unwrap_or(0),
                    bps: i["sum"]["bits_per_second"].as_f64().unwrap_or(0.0),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `"[  0- 1 s] 812.3  [  1- 2 s] 790.1 ..."`-like one-line summary in Mbit/s.
pub fn format_intervals(iv: &[Interval]) -> String {
    iv.iter().map(|i| format!("{:.0}s:{:.1}", i.start, i.bps / 1e6)).collect::<Vec<_>>().join(" ")
}

/// The flood tests' streams are paced: what they show is that the flow table keeps
/// an established flow through a flood, not how fast net_tap carries it. In software
/// mode every frame the dataplane forwards is a tap write that runs the kernel's
/// bridge, router and receiving TCP stack on the lcore's own core, so an unpaced
/// stream fills that core by itself and any flood on top makes the tap queue drop
/// the stream's segments along with the flood's (on a NIC, forwarding a frame costs
/// the lcore a descriptor, not a kernel path).
pub const STREAM_RATE: &str = "200M";

/// A long iperf3 client in P-out (`-J`, so its result comes at the end); killed on
/// drop.
pub struct Stream {
    proc: Guarded,
    pub target: String,
    pub seconds: u32,
}

impl Stream {
    /// `iperf3 -c target -p 5201 -t seconds -b STREAM_RATE -i 1 -J` from P-out.
    pub fn start(topo: &Topology, target: &str, seconds: u32) -> Stream {
        Self::start_parallel(topo, target, seconds, 1, STREAM_RATE)
    }

    /// Like [`start`](Self::start) with `-P streams` TCP streams in one iperf3
    /// test, each paced at `rate` (iperf3's `-b`, per stream).
    pub fn start_parallel(topo: &Topology, target: &str, seconds: u32, streams: usize, rate: &str) -> Stream {
        let (t, p) = (seconds.to_string(), streams.to_string());
        let proc = topo.spawn(
            "out",
            &[
                "iperf3", "-c", target, "-p", "5201", "-t", &t, "-P", &p, "-b", rate, "-i", "1", "-J", "--connect-timeout",
                "5000",
            ],
        );
        Stream { proc, target: target.to_string(), seconds }
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Waits for the end (bounded) and returns the JSON result; panics unless it
    /// succeeded.
    pub fn finish(mut self) -> Value {
        let status = self.proc.wait_timeout(Duration::from_secs(u64::from(self.seconds) + 30));
        let out = self.proc.output();
        // The log has stdout and stderr: the JSON object is stdout's.
        let json = out.find('{').map_or("", |i| &out[i..]);
        let json = json.rfind('}').map_or("", |j| &json[..=j]);
        let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
        if !status.is_some_and(|s| s.success()) || v.get("error").is_some() || v.get("end").is_none() {
            panic!("iperf3 to {} ({status:?}): {out}", self.target);
        }
        v
    }
}

/// Established connections to port 5201 (iperf3's control and data connections)
/// in each of `backends` (`ss` in each namespace).
pub fn iperf3_connections(topo: &Topology, backends: &[&'static str]) -> Vec<(&'static str, usize)> {
    backends
        .iter()
        .map(|be| {
            let out = topo.exec_ok(be, &["ss", "-Htn", "state", "established", "( sport = :5201 )"]);
            (*be, out.lines().filter(|l| !l.trim().is_empty()).count())
        })
        .collect()
}

/// Runs `args` in `leaf` and describes the result (for messages).
pub fn exec_described(topo: &Topology, leaf: &str, args: &[&str]) -> String {
    describe(&topo.exec(leaf, args))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn flood_line() {
        let text = "synflood: syn to 198.18.1.3:5201 ...\nsynflood mode=syn sent=811840 seconds=3.000 pps=270608 send_errors=2\n";
        assert_eq!(
            parse_flood_line(text),
            Some(FloodResult { sent: 811_840, seconds: 3.0, pps: 270_608.0, send_errors: 2 })
        );
        assert_eq!(parse_flood_line("synflood: sendmmsg: error"), None);
    }

    #[test]
    fn intervals() {
        let v: Value = serde_json::from_str(
            r#"{"intervals":[{"sum":{"start":0,"end":1,"bytes":1000,"bits_per_second":8000}},
                             {"sum":{"start":1,"end":2,"bytes":0,"bits_per_second":0}}]}"#,
        )
        .unwrap();
        let iv = iperf3_intervals(&v);
        assert_eq!(iv.len(), 2);
        assert_eq!((iv[0].bytes, iv[1].bytes, iv[1].start), (1000, 0, 1.0));
        assert_eq!(format_intervals(&iv), "0s:0.0 1s:0.0");
    }
}
