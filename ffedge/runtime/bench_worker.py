"""One measurement in a fresh interpreter, so that no other runtime's thread pool is alive and peak RSS is its own.

``run_isolated("ffedge.runtime.bench:measure_ort", {...})`` starts
``python -m ffedge.runtime.bench_worker SPEC OUT``: the child imports the named
function (an ``ffedge`` module only), calls it with the keyword arguments and writes
the dict it returns to ``OUT`` as JSON. The target is named by a string, so the
device side never imports the torch baseline (``ffedge.train.torch_bench``); only the
child that runs it does. ``isolate=False`` runs the function in this process instead.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from ffedge.errors import FFEdgeError


def resolve(target: str) -> Callable[..., dict[str, Any]]:
    """``"ffedge.module:function"`` -> the function."""
    module, _, name = target.partition(":")
    if not (module == "ffedge" or module.startswith("ffedge.")) or not name:
        raise FFEdgeError(f"bench target {target!r} is not 'ffedge.<module>:<function>'")
    return getattr(importlib.import_module(module), name)


def run_isolated(
    target: str, kwargs: dict[str, Any], isolate: bool = True, timeout: float | None = None, what: str | None = None
) -> dict[str, Any]:
    """``target(**kwargs)`` in a fresh ``python`` process (``isolate``) or here; its dict (JSON types only).

    The child's error is one FFEdgeError line, ``<what> (in its own process): <its error>``."""
    if not isolate:
        return json.loads(json.dumps(resolve(target)(**kwargs)))
    with tempfile.TemporaryDirectory(prefix="ffedge-bench-") as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(json.dumps({"target": target, "kwargs": kwargs}))
        r = subprocess.run(
            [sys.executable, "-m", "ffedge.runtime.bench_worker", str(spec), str(out)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0 or not out.exists():
            lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
            last = lines[-1].removeprefix("error: ") if lines else f"exit status {r.returncode}"
            raise FFEdgeError(f"{what or target} (in its own process): {last}")
        return json.loads(out.read_text())


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    try:
        result = resolve(spec["target"])(**spec["kwargs"])
    except FFEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
