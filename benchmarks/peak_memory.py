"""Peak resident memory of a process, as the kernel counts it (Linux)."""


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started its program (``VmHWM``).

    Not ``ru_maxrss``: Linux carries a parent's peak across fork and exec, so a Dask worker
    spawned by a client would report at least the client's size at the time of the spawn.
    """
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))


def reset_peak_rss() -> None:
    """Reset this process's peak resident memory to its current size."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
