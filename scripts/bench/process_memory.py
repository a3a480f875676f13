"""What the open_clip sides of the memory benchmarks share (openclip_loss_memory.py,
openclip_max_batch.py, openclip_model_memory.py; the ferroclip sides have the same in
trainer/examples/bench_support/memory.rs): /proc/self/status fields, resetting the peak,
and the address-space cap that turns "over budget" into a failed allocation."""
import resource


def status_bytes(field):
    """A /proc/self/status field (VmRSS, VmHWM, VmSize) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak():
    """Resets VmHWM to the present RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def cap_address_space(budget_gib):
    """Caps the address space at budget_gib above its present size."""
    limit = status_bytes("VmSize") + int(budget_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
