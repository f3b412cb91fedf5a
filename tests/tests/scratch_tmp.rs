use fulcrum_tests::*;
use fulcrum_tests::client;
use fulcrum_tests::servers::*;
use std::time::{Duration, Instant};
#[test]
fn scale_direct() {
    raise_nofile_limit(65536);
    let topo = Topology::up();
    let cli = topo.ns("cli");
    let echo = start_backends(&topo, 9000, Mode::Echo, &[]);
    let rep = in_netns(&cli, || client::bulk_echo(echo[0].addr(), 500, 1<<20, 7, Duration::from_secs(120)));
    eprintln!("echo500: ok {} failed {} transfer {:?} total {:?} conc {}", rep.ok, rep.failed, rep.transfer, rep.elapsed, rep.concurrent);
    let hold = start_backends(&topo, 9004, Mode::Hold, &[]);
    let t = Instant::now();
    let (conns, errs, nerr) = in_netns(&cli, || client::open_idle(hold[1].addr(), 10000, 16, Some(Duration::from_secs(1)), Duration::from_secs(60)));
    eprintln!("10k open in {:?}, errs {nerr} {:?}", t.elapsed(), errs.first());
    wait_until(Duration::from_secs(10), "hold", || hold[1].active() == 10000);
    let t = Instant::now();
    eprintln!("touch fail {} in {:?}", client::touch(&conns), t.elapsed());
    drop(hold);
    let closed = client::wait_closed(&conns, Duration::from_secs(20));
    eprintln!("{closed:?}");
}
