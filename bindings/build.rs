//! Generates the DPDK bindings against the system DPDK found by pkg-config.
//!
//! The `static inline` fast-path functions (`rte_eth_rx_burst`, ...) have no
//! symbol in the shared libraries, so bindgen writes C wrappers for them
//! (`wrap_static_fns`) which we compile with the very same cflags.

use std::env;
use std::path::PathBuf;

const MISSING: &str = "DPDK was not found by pkg-config (libdpdk.pc).
Install it with:  apt-get install libdpdk-dev dpdk dpdk-dev clang libclang-dev pkg-config
(or run scripts/setup.sh, which installs everything Fulcrum needs).";

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=shim.c");
    let dpdk = match pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => panic!("{MISSING}\n\npkg-config said: {e}"),
    };
    // The exact cflags (they carry `-include rte_config.h` and `-march=...`).
    let cflags: Vec<String> = pkg_config::get_variable("libdpdk", "cflags")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_else(|| {
            let out = std::process::Command::new("pkg-config")
                .args(["--cflags", "libdpdk"])
                .output()
                .expect("run pkg-config --cflags libdpdk");
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        });

    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let wrappers = out.join("static_fns");
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(&cflags)
        .wrap_static_fns(true)
        .wrap_static_fns_path(&wrappers)
        .clang_macro_fallback()
        .allowlist_function("rte_eal_(init|cleanup|remote_launch|wait_lcore|mp_wait_lcore)")
        .allowlist_function("rte_(lcore_id|get_main_lcore|lcore_count|get_next_lcore|lcore_to_socket_id|socket_id|lcore_is_enabled|thread_register)")
        .allowlist_function("rte_(strerror|delay_us_sleep|pause|get_tsc_hz|rdtsc)")
        .allowlist_function("fulcrum_rte_errno|fulcrum_memif_.*")
        .allowlist_function("rte_pktmbuf_(pool_create|alloc|free|alloc_bulk|append|trim|adj|reset)")
        .allowlist_function("rte_mempool_(free|avail_count|in_use_count)")
        .allowlist_function("rte_eth_(dev_count_avail|find_next|dev_configure|dev_info_get|rx_queue_setup|tx_queue_setup|dev_start|dev_stop|dev_close|macaddr_get|link_get_nowait|stats_get|xstats_get|xstats_get_names|promiscuous_enable|dev_socket_id|rx_burst|tx_burst|dev_get_name_by_port|dev_set_mtu|dev_get_mtu)")
        .allowlist_function("rte_ring_(create|free|enqueue_burst|dequeue_burst|count)")
        .allowlist_var("RTE_.*|RING_F_.*")
        .allowlist_type("rte_eth_.*")
        .opaque_type("rte_arp_hdr|rte_arp_ipv4|rte_l2tpv2_.*|rte_ecpri_.*|rte_gtp_.*")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .unwrap_or_else(|e| panic!("bindgen failed on the DPDK headers: {e}\n{MISSING}"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");

    let mut build = cc::Build::new();
    build
        .file(wrappers.with_extension("c"))
        .file("shim.c")
        .include(env::current_dir().unwrap())
        .warnings(false);
    for flag in &cflags {
        build.flag(flag);
    }
    build.compile("dpdk_static_fns");

    for path in &dpdk.link_paths {
        println!("cargo:rustc-link-search=native={}", path.display());
    }
    for lib in &dpdk.libs {
        println!("cargo:rustc-link-lib={lib}");
    }
}
