//! Compile-time layout of the segment. See the crate documentation for the
//! picture; every offset here is in bytes from the start of the file and is
//! a multiple of 8 (everything is accessed as 64-bit atomic words).

/// File magic, first 8 bytes of the file.
pub const MAGIC: [u8; 8] = *b"FULCRUM\0";
/// Layout version; bump on any incompatible change of this file.
/// 3: `VIP_COUNTERS` 16 -> 24 (the proxy's SYN-flood counters).
pub const LAYOUT_VERSION: u32 = 3;

/// Number of per-lcore counter blocks.
pub const MAX_LCORES: usize = 32;
/// VIP ids are `0..MAX_VIPS`.
pub const MAX_VIPS: usize = 256;
/// Backend counter slots are `0..MAX_BACKENDS` (global across VIPs).
pub const MAX_BACKENDS: usize = 4096;
/// Named lcore-level counter slots per lcore block.
pub const LCORE_COUNTERS: usize = 64;
/// Counters per VIP per lcore block.
pub const VIP_COUNTERS: usize = 24;
/// Counters per backend per lcore block.
pub const BACKEND_COUNTERS: usize = 10;
/// Maximum encoded configuration payload.
pub const MAX_PAYLOAD: usize = 4 << 20;
/// Bytes per lcore counter name (NUL padded, so at most `NAME_LEN - 1` bytes of text).
pub const NAME_LEN: usize = 32;
/// Largest encoded dataplane report (JSON `DataplaneReport`).
pub const MAX_REPORT: usize = (128 << 10) - REPORT_HDR;

const PAGE: usize = 4096;
const fn round_up(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

// ---- header (page 0) ------------------------------------------------------
pub const H_MAGIC: usize = 0;
pub const H_VERSION: usize = 8;
pub const H_FILE_SIZE: usize = 16;
/// Bytes 24..160: the immutable geometry words, in this order.
pub const H_GEOMETRY: usize = 24;
pub const H_CREATED_NS: usize = 160;
/// xxh3 over the little-endian bytes 0..168.
pub const H_CHECKSUM: usize = 168;
pub const HEADER_LEN: usize = 176;

/// Config control word: `generation << 1 | slot` of the newest complete
/// publication, 0 = nothing published yet. Written only by the control plane.
pub const CFG_ACTIVE: usize = 256;

/// Control-plane status (own cache lines).
pub const CP_OFF: usize = 512;
pub const CP_PID: usize = CP_OFF;
pub const CP_START_NS: usize = CP_OFF + 8;
pub const CP_HEARTBEAT_NS: usize = CP_OFF + 16;
pub const CP_PUBLISHED_GEN: usize = CP_OFF + 24;

/// Dataplane status (own cache lines).
pub const DP_OFF: usize = 768;
pub const DP_EPOCH: usize = DP_OFF;
pub const DP_PID: usize = DP_OFF + 8;
pub const DP_START_NS: usize = DP_OFF + 16;
pub const DP_HEARTBEAT_NS: usize = DP_OFF + 24;
pub const DP_APPLIED_GEN: usize = DP_OFF + 32;
pub const DP_REJECTED_COUNT: usize = DP_OFF + 40;
pub const DP_LAST_REJECT_CODE: usize = DP_OFF + 48;
pub const DP_LAST_REJECT_GEN: usize = DP_OFF + 56;
pub const DP_LCORE_MASK: usize = DP_OFF + 64;
pub const DP_GAUGE_MASK: usize = DP_OFF + 72;

/// Lcore counter name table: `LCORE_COUNTERS` x `NAME_LEN` bytes.
pub const NAMES_OFF: usize = 2048;

// ---- dataplane report -----------------------------------------------------
/// The dataplane's report (its facts, the generation every lcore installed,
/// the VIPs it refused): seq, length, checksum, then the JSON payload at
/// +REPORT_HDR. Written only by the dataplane, under its own sequence counter.
pub const REPORT_OFF: usize = PAGE;
pub const REPORT_HDR: usize = 64;
pub const REPORT_SEQ: usize = REPORT_OFF;
pub const REPORT_LEN: usize = REPORT_OFF + 8;
pub const REPORT_SUM: usize = REPORT_OFF + 16;
pub const REPORT_SIZE: usize = REPORT_HDR + MAX_REPORT;

// ---- config slots ---------------------------------------------------------
/// Slot header: seq, generation, payload length, checksum; payload at +SLOT_HDR.
pub const SLOT_HDR: usize = PAGE;
pub const SLOT_SEQ: usize = 0;
pub const SLOT_GEN: usize = 8;
pub const SLOT_LEN: usize = 16;
pub const SLOT_SUM: usize = 24;
pub const SLOT_SIZE: usize = SLOT_HDR + MAX_PAYLOAD;
pub const SLOT0_OFF: usize = REPORT_OFF + REPORT_SIZE;
pub const SLOT1_OFF: usize = SLOT0_OFF + SLOT_SIZE;

// ---- per-lcore counter blocks --------------------------------------------
pub const BLOCK_LCORE_OFF: usize = 0;
pub const BLOCK_VIP_OFF: usize = BLOCK_LCORE_OFF + LCORE_COUNTERS * 8;
pub const BLOCK_BACKEND_OFF: usize = BLOCK_VIP_OFF + MAX_VIPS * VIP_COUNTERS * 8;
const BLOCK_USED: usize = BLOCK_BACKEND_OFF + MAX_BACKENDS * BACKEND_COUNTERS * 8;
/// Size of one lcore block, page-rounded (so blocks never share cache lines).
pub const BLOCK_SIZE: usize = round_up(BLOCK_USED, PAGE);
pub const COUNTERS_OFF: usize = SLOT1_OFF + SLOT_SIZE;
/// Total file size.
pub const FILE_SIZE: usize = COUNTERS_OFF + MAX_LCORES * BLOCK_SIZE;

const _: () = assert!(HEADER_LEN <= CFG_ACTIVE);
const _: () = assert!(DP_GAUGE_MASK + 8 <= NAMES_OFF);
const _: () = assert!(NAMES_OFF + LCORE_COUNTERS * NAME_LEN <= REPORT_OFF);
const _: () = assert!(SLOT0_OFF % PAGE == 0);
const _: () = assert!(COUNTERS_OFF % PAGE == 0);
const _: () = assert!(NAME_LEN % 8 == 0 && MAX_PAYLOAD % 8 == 0);

/// Geometry words stored at `H_GEOMETRY..H_CREATED_NS`, with their names for
/// error messages. A reader compares each with its own compiled value.
pub(crate) const GEOMETRY: [(&str, u64); 17] = [
    // The report region sits between the names and slot 0, so slot0_offset
    // below changes with it.
    ("max_lcores", MAX_LCORES as u64),
    ("max_vips", MAX_VIPS as u64),
    ("max_backends", MAX_BACKENDS as u64),
    ("lcore_counters", LCORE_COUNTERS as u64),
    ("vip_counters", VIP_COUNTERS as u64),
    ("backend_counters", BACKEND_COUNTERS as u64),
    ("max_payload", MAX_PAYLOAD as u64),
    ("name_len", NAME_LEN as u64),
    ("cp_offset", CP_OFF as u64),
    ("dp_offset", DP_OFF as u64),
    ("names_offset", NAMES_OFF as u64),
    ("slot0_offset", SLOT0_OFF as u64),
    ("slot1_offset", SLOT1_OFF as u64),
    ("slot_size", SLOT_SIZE as u64),
    ("counters_offset", COUNTERS_OFF as u64),
    ("block_size", BLOCK_SIZE as u64),
    ("file_size_check", FILE_SIZE as u64),
];
const _: () = assert!(H_GEOMETRY + GEOMETRY.len() * 8 == H_CREATED_NS);

/// Word index of byte offset `b`.
#[inline(always)]
pub(crate) const fn w(b: usize) -> usize {
    b / 8
}

/// Byte offset of lcore block `lcore`.
#[inline(always)]
pub const fn block_off(lcore: usize) -> usize {
    COUNTERS_OFF + lcore * BLOCK_SIZE
}

/// Byte offset of config slot `slot` (0 or 1).
#[inline(always)]
pub const fn slot_off(slot: usize) -> usize {
    if slot == 0 {
        SLOT0_OFF
    } else {
        SLOT1_OFF
    }
}
