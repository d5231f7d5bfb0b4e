"""Peak memory of this process (device side: standard library only)."""

from __future__ import annotations

import sys


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far, in MB (None where the OS does not say).

    Linux: VmHWM, which starts afresh at exec (``ru_maxrss`` would include the
    memory of the parent a subprocess was forked from).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024
