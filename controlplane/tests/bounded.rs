//! The control socket and the Prometheus endpoint under hostile clients: a
//! 1 GiB line, thousands of slow clients. The real daemon (no dataplane):
//! its memory and threads stay bounded, its heartbeat never goes stale,
//! `fulcrumctl status` keeps answering, and the counters show what was cut.

mod common;

use common::*;
use fulcrum_controlplane::inputs::{MAX_CLIENTS, MAX_REQUEST};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Growth of the daemon's memory allowed during an attack.
const MAX_GROWTH_KIB: u64 = 64 * 1024;
/// Threads beyond the baseline allowed: one per client slot of each
/// endpoint, plus a margin.
const THREAD_MARGIN: u64 = 8;
const GIB: u64 = 1 << 30;

fn counter(v: &Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or_else(|| panic!("no {name} in {v}"))
}

/// Writes 64 KiB chunks until the peer closes or 1 GiB is written; returns
/// the bytes written and whether the peer cut it.
fn stream_gib(mut w: impl Write) -> (u64, bool) {
    let chunk = vec![b'x'; 64 * 1024];
    let mut total = 0u64;
    while total < GIB {
        match w.write(&chunk) {
            Ok(0) | Err(_) => return (total, true),
            Ok(n) => total += n as u64,
        }
    }
    (total, false)
}

/// `fulcrumctl status` must answer, now.
#[track_caller]
fn status_answers(d: &Daemon) -> Value {
    let out = d.ctl(&["--json", "status"]);
    assert!(out.status.success(), "fulcrumctl status failed during the attack: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[track_caller]
fn check_watched(what: &str, before: ProcStatus, w: &Watched, after: ProcStatus, endpoints: u64) {
    println!(
        "{what}: VmRSS before {} KiB, max {} KiB, after {} KiB; VmHWM before {} KiB, after {} KiB; threads before {}, max {}; \
         heartbeat checked {} times, stale {}",
        before.rss_kib, w.max_rss_kib, after.rss_kib, before.hwm_kib, after.hwm_kib, before.threads, w.max_threads,
        w.samples, w.stale_beats
    );
    assert!(w.samples > 0);
    assert_eq!(w.stale_beats, 0, "{what}: the control plane's heartbeat went stale");
    assert!(
        w.max_rss_kib.max(after.hwm_kib) < before.rss_kib + MAX_GROWTH_KIB,
        "{what}: memory grew by more than {MAX_GROWTH_KIB} KiB"
    );
    let cap = before.threads + endpoints * MAX_CLIENTS as u64 + THREAD_MARGIN;
    assert!(w.max_threads <= cap, "{what}: {} threads, more than {cap}", w.max_threads);
}

#[test]
fn a_one_gib_line_is_cut_at_64_kib_on_both_endpoints() {
    let d = Daemon::start(VIPS);
    let metrics = d.prometheus_addr();
    let before = proc_status(d.pid());
    let watch = Watch::start(&d);

    // Rounds of one 1 GiB line to each endpoint at once, each on a new
    // connection, for 2 s (at most 1000 rounds): a sustained attack, the
    // heartbeat watched throughout.
    let attack = std::time::Instant::now();
    let (mut control_max, mut http_max) = (0, 0);
    let mut reply = String::new();
    let mut rounds = 0u64;
    while rounds < 1000 && attack.elapsed() < Duration::from_secs(2) {
        let round = rounds;
        rounds += 1;
        let sock = d.socket();
        let control = std::thread::spawn(move || {
            let s = UnixStream::connect(sock).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
            let r = stream_gib(&s);
            // The refusal is there to read.
            let mut reply = String::new();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = (&s).read_to_string(&mut reply);
            (r, reply)
        });
        let http = std::thread::spawn(move || {
            let mut s = TcpStream::connect(metrics).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nX-Long: ").unwrap();
            stream_gib(&s)
        });
        if round == 0 {
            // fulcrumctl answers while both are streaming.
            assert_eq!(status_answers(&d)["controlplane"]["alive"], true);
        }
        let ((control_sent, control_cut), r) = control.join().unwrap();
        let (http_sent, http_cut) = http.join().unwrap();
        assert!(control_cut && http_cut, "a 1 GiB request was read to its end");
        assert!(r.contains(&format!("request longer than {MAX_REQUEST} bytes")), "{r:?}");
        control_max = control_max.max(control_sent);
        http_max = http_max.max(http_sent);
        reply = r;
    }
    let st = status_answers(&d);
    let w = watch.finish();
    let after = proc_status(d.pid());
    println!("{rounds} rounds; control socket: at most {control_max} bytes written before the daemon closed; reply {reply:?}");
    println!("prometheus: at most {http_max} bytes written before the daemon closed");
    println!("status clients: {}", st["controlplane"]["clients"]);
    assert!(control_max < 64 << 20 && http_max < 64 << 20, "the daemon read far past the cap");
    check_watched("1 GiB line", before, &w, after, 1);
    let clients = &st["controlplane"]["clients"];
    assert_eq!(counter(&clients["control"], "oversize"), rounds, "{clients}");
    assert_eq!(counter(&clients["prometheus"], "oversize"), rounds, "{clients}");
    // The daemon still serves both.
    let (head, body) = d.http_get("/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for line in [
        format!("fulcrum_controlplane_oversize_requests_total{{endpoint=\"control\"}} {rounds}\n"),
        format!("fulcrum_controlplane_oversize_requests_total{{endpoint=\"prometheus\"}} {rounds}\n"),
    ] {
        assert!(body.contains(&line), "no {line:?} in\n{body}");
    }
}

#[test]
fn oversize_and_malformed_requests_get_clear_answers() {
    let d = Daemon::start(VIPS);
    let metrics = d.prometheus_addr();
    // Control: a line one byte over the cap.
    let s = UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = vec![b' '; MAX_REQUEST];
    line.push(b'\n');
    let _ = (&s).write_all(&line);
    let mut reply = String::new();
    let _ = (&s).read_to_string(&mut reply);
    assert!(reply.starts_with("{\"ok\":false,\"error\":\"request longer than 65536 bytes"), "{reply:?}");
    // A request of exactly the cap is read (and is no JSON).
    let s = UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    line.remove(0);
    (&s).write_all(&line).unwrap();
    let mut reply = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut reply).unwrap();
    assert!(reply.contains("bad request"), "{reply:?}");

    let http = |req: &[u8]| {
        let mut s = TcpStream::connect(metrics).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(req);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    };
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Long: ".to_vec();
    big.resize(MAX_REQUEST + 10, b'a');
    let r = http(&big);
    assert!(r.starts_with("HTTP/1.1 431 "), "{r:?}");
    let r = http(b"nonsense\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400 "), "{r:?}");
    let r = http(b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200 ") && r.contains("fulcrum_controlplane_clients_max{endpoint=\"control\"} 64"), "{r}");
    drop(s);
    let clients = d.clients("prometheus");
    assert_eq!(counter(&clients, "oversize"), 1, "{clients}");
    // Once the daemon has seen the last client go, only fulcrumctl is served.
    let text = wait_for(Duration::from_secs(10), "the control client counters", || {
        let text = d.ok(&["status"]);
        text.contains("control socket: 1/64 clients, refused 0, oversize 1, timed out 0").then_some(text)
    });
    println!("{text}");
}

/// Connects `n` clients that send one byte and hold; returns them and how
/// many could not connect.
fn slow_unix(d: &Daemon, n: usize) -> (Vec<UnixStream>, usize) {
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        match UnixStream::connect(d.socket()) {
            Ok(s) => {
                let _ = (&s).write_all(b"{");
                held.push(s);
            }
            Err(_) => failed += 1,
        }
    }
    (held, failed)
}

fn slow_tcp(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, usize) {
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => {
                let _ = (&s).write_all(b"G");
                held.push(s);
            }
            Err(_) => failed += 1,
        }
    }
    (held, failed)
}

#[test]
fn two_thousand_slow_clients_on_each_endpoint_leave_the_daemon_bounded_and_answering() {
    const WANT: usize = 2000;
    // Both floods at once, plus fulcrumctl and the harness.
    let limit = raise_nofile(2 * WANT as u64 + 256);
    let n = WANT.min((limit as usize).saturating_sub(256) / 2);
    if n < WANT {
        println!("open-file limit {limit}: {n} slow clients per endpoint instead of {WANT}");
    } else {
        println!("open-file limit {limit}: {n} slow clients per endpoint");
    }
    let d = Daemon::start(VIPS);
    let metrics = d.prometheus_addr();
    let before = proc_status(d.pid());
    let watch = Watch::start(&d);

    let sock_daemon = &d;
    let ((unix, unix_failed), (tcp, tcp_failed)) = std::thread::scope(|s| {
        let u = s.spawn(|| slow_unix(sock_daemon, n));
        let t = s.spawn(|| slow_tcp(metrics, n));
        (u.join().unwrap(), t.join().unwrap())
    });
    println!(
        "connected: control socket {} ({unix_failed} failed), prometheus {} ({tcp_failed} failed)",
        unix.len(),
        tcp.len()
    );
    // While they hold: fulcrumctl answers (a refusal is retried until a
    // reserved slot frees) and reports the refusals.
    let st = status_answers(&d);
    let clients = st["controlplane"]["clients"].clone();
    println!("status during the attack: {clients}");
    assert!(counter(&clients["control"], "active") <= MAX_CLIENTS as u64, "{clients}");
    assert!(counter(&clients["prometheus"], "active") <= MAX_CLIENTS as u64, "{clients}");
    // Every held client of both endpoints is cut at its deadline: poll
    // until the slots are all given back, fulcrumctl answering each time.
    let end = std::time::Instant::now() + Duration::from_secs(60);
    let mut polls = 0;
    let clients = loop {
        let st = status_answers(&d);
        polls += 1;
        let c = st["controlplane"]["clients"].clone();
        let timed_out = |e: &str| counter(&c[e], "timed_out");
        // fulcrumctl itself holds one control slot.
        if counter(&c["control"], "active") <= 1 && counter(&c["prometheus"], "active") == 0
            && timed_out("control") > 0 && timed_out("prometheus") > 0
        {
            break c;
        }
        assert!(std::time::Instant::now() < end, "the slow clients were not cut: {c}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let w = watch.finish();
    let after = proc_status(d.pid());
    drop(unix);
    drop(tcp);
    println!("status after the deadlines ({polls} fulcrumctl status calls during the attack, all answered): {clients}");
    check_watched("slow clients", before, &w, after, 2);
    let (c, p) = (&clients["control"], &clients["prometheus"]);
    // Every held client was either refused (no slot) or cut at its deadline.
    // How many of each depends on timing: a slot cut before the last clients
    // connected takes another one (on a loaded machine, 128 timed out of 2000
    // instead of 64), so only the sum and the refusals' presence are asserted;
    // the cap itself is asserted above (`active` <= MAX_CLIENTS).
    let held = (n - unix_failed) as u64;
    assert!(counter(c, "refused") > 0, "{clients}");
    assert!(counter(c, "timed_out") + counter(c, "refused") >= held, "{clients}");
    let held = (n - tcp_failed) as u64;
    assert!(counter(p, "refused") > 0, "{clients}");
    assert!(counter(p, "timed_out") + counter(p, "refused") >= held, "{clients}");
    let (_, body) = d.http_get("/metrics");
    for name in ["refused_connections_total", "timed_out_clients_total"] {
        for e in ["control", "prometheus"] {
            let series = format!("fulcrum_controlplane_{name}{{endpoint=\"{e}\"}} ");
            let line = body.lines().find(|l| l.starts_with(&series)).unwrap_or_else(|| panic!("no {series} in\n{body}"));
            println!("{line}");
            assert!(line[series.len()..].parse::<u64>().unwrap() > 0, "{line}");
        }
    }
}

#[test]
fn a_corrupt_state_file_is_kept_aside_and_the_daemon_starts_from_the_toml() {
    let mut d = Daemon::start(VIPS);
    d.ok(&["vip", "add", "198.18.1.9:80"]);
    d.kill9();
    let state = d.state_file();
    let mut v: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    v["slots"]["198.18.1.1:80/198.18.0.21:8080"] = 999_999.into();
    let corrupt = serde_json::to_vec(&v).unwrap();
    std::fs::write(&state, &corrupt).unwrap();
    d.spawn();
    let log = d.log_text();
    let line = log.lines().find(|l| l.contains("not a valid state file")).unwrap_or_else(|| panic!("nothing logged:\n{log}"));
    println!("{line}");
    let copies: Vec<_> = std::fs::read_dir(state.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("controlplane.json.corrupt-"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(std::fs::read(&copies[0]).unwrap(), corrupt);
    for want in [state.display().to_string(), copies[0].display().to_string(), "slot 999999 out of range".into(), "starting from the TOML".into()] {
        assert!(line.contains(&want), "{line:?} should mention {want:?}");
    }
    // From the TOML: the VIP added with fulcrumctl is gone, a new state file written.
    let vips = d.json(&["vip", "list"]);
    assert_eq!(vips.as_array().unwrap().len(), 2, "{vips}");
    assert!(state.exists());
}
