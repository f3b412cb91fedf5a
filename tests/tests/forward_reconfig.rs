//! Forwarding VIPs under a changing backend set: the connection table keeps an
//! established flow on its backend after the control plane removes that
//! backend (it stays alive), while new flows follow the new Maglev table.
//! (A removed backend's counters leave the dataplane's stats with it, so what
//! each backend's own server received is the witness.)

use fulcrum_tests::cp::ControlPlane;
use fulcrum_tests::forward_util::*;
use fulcrum_tests::*;
use std::time::Duration;

const VIP: &str = "198.18.1.2";
const BACKENDS: [(&str, &str); 3] = [("be1", "198.18.0.21"), ("be2", "198.18.0.22"), ("be3", "198.18.0.23")];

fn vip_toml() -> String {
    let backends: Vec<String> =
        BACKENDS.iter().map(|(_, a)| format!("{{ address = \"{a}\", port = 5201 }}")).collect();
    format!(
        "[[vip]]\naddress = \"{VIP}\"\nport = 5201\nmode = \"dsr\"\naffinity = \"client\"\nbackends = [{}]\n",
        backends.join(", ")
    )
}

/// The backend whose packet counter moved since `before`, with the count.
fn busiest(before: &[(String, u64, u64, u64)], after: &[(String, u64, u64, u64)]) -> (String, u64) {
    after
        .iter()
        .map(|(a, p, _, _)| {
            let old = before.iter().find(|(b, ..)| b == a).map_or(0, |(_, p, _, _)| *p);
            (a.clone(), p - old)
        })
        .max_by_key(|(_, d)| *d)
        .expect("the VIP has backends")
}

#[test]
fn removed_backend_keeps_its_established_stream() {
    let topo = Topology::up();
    let _servers: Vec<Guarded> = BACKENDS
        .iter()
        .map(|(leaf, _)| {
            dsr_backend(&topo, leaf, VIP);
            iperf3_server(&topo, leaf, VIP)
        })
        .collect();
    let cp = ControlPlane::start(&topo, &vip_toml());
    // The control plane owns the whole VIP; the dataplane's file declares none.
    let dp = Dataplane::start(&topo, &cp.dataplane_toml());
    let first = cp.wait_applied(Duration::from_secs(15));

    let before = vip_backends(&fresh_stats(&dp), VIP, 5201, "tcp");
    let mut stream = topo.spawn("cli", &["iperf3", "-c", VIP, "-p", "5201", "-t", "8", "-i", "1", "-J"]);
    // Find the backend carrying the stream from the dataplane's counters.
    let serving = wait_for(Duration::from_secs(10), "the stream to show on one backend", || {
        let (addr, packets) = busiest(&before, &vip_backends(&fresh_stats(&dp), VIP, 5201, "tcp"));
        if packets > 1000 { Ok(addr) } else { Err(format!("busiest backend {addr}: {packets} packets")) }
    });
    eprintln!("stream served by {serving}; removing it from the VIP");
    cp.ctl_ok(&["backend", "del", &format!("{VIP}:5201"), &format!("{serving}:5201")]);
    cp.wait_applied_at_least(first + 1, Duration::from_secs(10));
    let status = stream.wait_timeout(Duration::from_secs(30)).expect("iperf3 finished");
    let out = stream.output();
    assert!(status.success(), "the stream broke after its backend was removed:\n{out}");
    let json_start = out.find('{').expect("iperf3 printed JSON");
    let result: Value = serde_json::from_str(&out[json_start..]).expect("iperf3 JSON");
    assert!(result.get("error").is_none(), "iperf3 error: {}", result["error"]);
    let intervals = result["intervals"].as_array().expect("intervals");
    let rates: Vec<f64> = intervals.iter().map(|i| i["sum"]["bits_per_second"].as_f64().unwrap_or(0.0)).collect();
    eprintln!("per-second Mbit/s: {:?}", rates.iter().map(|r| (r / 1e6).round()).collect::<Vec<_>>());
    assert!(rates.iter().all(|&r| r > 0.0), "a second without data: {rates:?}");

    // Every byte went to the removed backend's server: it reports the one
    // finished stream, the others none.
    let finished = |i: usize| _servers[i].output().matches("receiver").count();
    let home = BACKENDS.iter().position(|(_, a)| *a == serving).expect("a backend address");
    assert_eq!(finished(home), 1, "the removed backend's server:\n{}", _servers[home].output());
    for i in (0..3).filter(|&i| i != home) {
        assert_eq!(finished(i), 0, "{} took part in the stream:\n{}", BACKENDS[i].1, _servers[i].output());
    }

    // A new flow goes to a remaining backend.
    let check = iperf3(&topo, VIP, &["-t", "1"]);
    assert!(iperf3_tcp_received(&check).0 > 0);
    wait_until(Duration::from_secs(5), "a server to report the new stream", || (0..3).map(finished).sum::<usize>() == 2);
    assert_eq!(finished(home), 1, "a new flow reached the removed backend");
    let new_home = BACKENDS[(0..3).find(|&i| i != home && finished(i) == 1).expect("one server took it")].1;
    eprintln!("a new stream went to {new_home}");
}
