//! What the memory benchmarks (examples `loss_memory` and `max_batch`) share: their
//! argument reading, `/proc/self/status` fields, and the address-space cap that turns
//! "over budget" into a failed allocation.

/// The value after `name` in `args`, or `default`.
pub fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// A `/proc/self/status` field in bytes (`VmRSS`, `VmHWM`, `VmSize`).
pub fn status_bytes(field: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("/proc/self/status has no {field} line"))
}

/// Caps the address space at `budget` bytes above its present size.
pub fn cap_address_space(budget: u64) -> Result<(), String> {
    let limit = status_bytes("VmSize")? + budget;
    let rlim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct; lowering the soft limit is always allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlim) } != 0 {
        return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}
