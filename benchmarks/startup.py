"""Start-up time of the `ffedge` CLI: `--help`, `--version`, `info BUNDLE`, `predict BUNDLE digit.png`, each in a fresh process.

Each command runs --repeats times as its own process, exactly as the `ffedge` console script runs it
(`from ffedge.cli import main; main()`), and the minimum wall time is reported (the least disturbed run; the
median is recorded too), with the minimum CPU time (user + system, all threads). With several --tree LABEL=PATH
the same commands run from each source tree (PYTHONPATH=PATH, from that folder, so the tree's ffedge is
imported), commands and trees taking turns run by run, so that a load change on the machine affects each alike;
the table then has columns per tree and the ratio of the last to the first. A command a tree does not have
(`--version` before it existed) is shown as failed, not timed. With --importtime N the N largest cumulative
imports of each command (`python -X importtime`, one run) are recorded for each tree.

    python benchmarks/startup.py                                              # this tree, golden int8 bundle
    python benchmarks/startup.py --tree before=../main --tree after=. --importtime 12
    python benchmarks/startup.py --quick                                      # 2 repeats; results/quick/
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, add_out_option, command, machine, machine_line, out_stem, script_parser, write_results  # noqa: E402

NAME = "startup"
GOLDEN = ROOT / "tests" / "golden" / "bundle-int8"
# What the `ffedge` console script runs.
CLI = "import sys\nfrom ffedge.cli import main\nsys.argv[0] = 'ffedge'\nmain()\n"


# The floor of every device command: the interpreter with numpy and onnxruntime, no ffedge.
FLOOR = "floor: python -c 'import numpy, onnxruntime'"


def commands(bundle: Path, image: Path) -> dict[str, tuple[str, list[str]]]:
    """The processes measured, by name: (python -c CODE, its arguments)."""
    return {
        "ffedge --help": (CLI, ["--help"]),
        "ffedge --version": (CLI, ["--version"]),
        "ffedge info BUNDLE": (CLI, ["info", str(bundle)]),
        "ffedge predict BUNDLE digit.png": (CLI, ["predict", str(bundle), str(image)]),
        FLOOR: ("import numpy, onnxruntime", []),
    }


def run_once(
    python: str, tree: Path, cmd: tuple[str, list[str]], extra: tuple[str, ...] = ()
) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds, exit code, stderr) of one fresh ``python -c CODE ARGS`` process (``cmd``) importing
    ffedge from ``tree``. CPU time (user + system, all its threads) moves far less than wall time on a busy machine."""
    # PYTHONDONTWRITEBYTECODE (set on some CI machines) would make every run compile ffedge's sources again; pip
    # byte-compiles an installed wheel, so the untimed first run writes the .pyc files a user's install has.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(  # cwd: the tree, as `python -c` puts the working folder first on sys.path
        [python, *extra, "-c", cmd[0], *cmd[1]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tree,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, r.returncode, r.stderr


def import_top(python: str, tree: Path, cmd: tuple[str, list[str]], n: int) -> list[dict[str, Any]]:
    """The ``n`` largest cumulative imports of one run (``-X importtime``), in ms."""
    err = run_once(python, tree, cmd, ("-X", "importtime"))[3]
    rows = []
    for line in err.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split("|"))
        if cumulative.isdigit():
            rows.append({"module": name, "cumulative_ms": round(int(cumulative) / 1000, 1)})
    return sorted(rows, key=lambda r: -r["cumulative_ms"])[:n]


def one_image(tmp: Path) -> Path:
    """The first held-out digit of mnist-5k as a PNG."""
    from PIL import Image

    from ffedge.datasets import load_dataset

    path = tmp / "digit.png"
    Image.fromarray(load_dataset("mnist-5k").x_test[0][..., 0]).save(path)
    return path


def parse_trees(specs: list[str]) -> dict[str, Path]:
    trees: dict[str, Path] = {}
    for spec in specs or [f"this={ROOT}"]:
        label, sep, path = spec.partition("=")
        if not sep or not label or not (Path(path) / "ffedge" / "cli").is_dir():
            sys.exit(f"error: --tree {spec!r}: give LABEL=PATH, PATH a source tree holding ffedge/cli")
        trees[label] = Path(path).resolve()
    return trees


def markdown(result: dict[str, Any]) -> str:
    labels = list(result["trees"])
    head = " | ".join(f"{t} min ms (median) | {t} CPU min ms" for t in labels)
    ratio = len(labels) > 1
    lines = [
        "# Start-up time of the ffedge CLI",
        "",
        f"Command: `{result['command']}`. Each command in a fresh process (as the `ffedge` console script runs it), "
        f"{result['repeats']} runs per tree, commands and trees taking turns; min and median wall time, and min CPU "
        "time (user + system of the process and its threads: what a busy machine moves least). "
        f"Bundle: {result['bundle']}. ffedge's modules run from their .pyc files (written by an untimed first run), "
        "as from a wheel pip installed.",
        f"Load average before / after: {result['load_before']} / {result['load_after']}.",
        "",
        f"| command | {head} |" + (f" {labels[-1]} / {labels[0]} (min wall; CPU) |" if ratio else ""),
        "|---|" + "---:|" * (2 * len(labels) + ratio),
    ]
    for name, per_tree in result["results"].items():
        cells = []
        for t in labels:
            r = per_tree[t]
            cells.append(
                f"{r['min_ms']:.0f} ({r['median_ms']:.0f}) | {r['cpu_min_ms']:.0f}"
                if r["ok"]
                else f"failed (exit {r['exit']}) | –"
            )
        row = f"| `{name}` | " + " | ".join(cells) + " |"
        if ratio:
            a, b = per_tree[labels[0]], per_tree[labels[-1]]
            both = a["ok"] and b["ok"]
            row += f" {b['min_ms'] / a['min_ms']:.2f}x; {b['cpu_min_ms'] / a['cpu_min_ms']:.2f}x |" if both else " – |"
        lines.append(row)
    for t, tops in result.get("importtime", {}).items():
        lines += ["", f"Largest cumulative imports, tree `{t}` (`python -X importtime`, one run, ms):", ""]
        for name, rows in tops.items():
            lines.append(f"- `{name}`: " + ", ".join(f"{r['module']} {r['cumulative_ms']:.0f}" for r in rows))
    lines += ["", machine_line(result["machine"]), ""]
    return "\n".join(lines)


def main() -> None:
    p = script_parser(__doc__)
    p.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH", help="source tree to measure (repeat)")
    p.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    p.add_argument("--bundle", type=Path, default=GOLDEN, help="bundle for info and predict (default: golden int8)")
    p.add_argument("--repeats", type=int, default=7, help="runs per command and tree (min and median reported)")
    p.add_argument("--importtime", type=int, default=0, metavar="N", help="record the N largest imports per command")
    p.add_argument("--quick", action="store_true", help="2 repeats; writes results/quick/")
    add_out_option(p, NAME)
    a = p.parse_args()
    out = out_stem(NAME, a.out, a.quick)
    trees = parse_trees(a.tree)
    repeats = 2 if a.quick else max(1, a.repeats)
    if not (a.bundle / "manifest.json").is_file():
        sys.exit(f"error: --bundle {a.bundle}: not a bundle folder (no manifest.json)")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(a.bundle.resolve(), one_image(Path(tmp)))
        times: dict[str, dict[str, list[float]]] = {n: {t: [] for t in trees} for n in cmds}
        cpus: dict[str, dict[str, list[float]]] = {n: {t: [] for t in trees} for n in cmds}
        exits: dict[str, dict[str, int]] = {n: {t: 0 for t in trees} for n in cmds}
        for cmd in cmds.values():
            for tree in trees.values():  # one untimed run each: the file cache, .pyc files
                run_once(a.python, tree, cmd)
        for _ in range(repeats):  # round robin over commands and trees: load changes hit each alike
            for name, cmd in cmds.items():
                for label, tree in trees.items():
                    seconds, cpu, code, _ = run_once(a.python, tree, cmd)
                    exits[name][label] = exits[name][label] or code
                    times[name][label].append(seconds)
                    cpus[name][label].append(cpu)
        tops = (
            {
                t: {n: import_top(a.python, tree, cmd, a.importtime) for n, cmd in cmds.items() if n != FLOOR}
                for t, tree in trees.items()
            }
            if a.importtime
            else {}
        )
    results = {
        name: {
            t: {
                "ok": exits[name][t] == 0,
                "exit": exits[name][t],
                "min_ms": round(1000 * min(times[name][t]), 1),
                "median_ms": round(1000 * statistics.median(times[name][t]), 1),
                "runs_ms": [round(1000 * s, 1) for s in times[name][t]],
                "cpu_min_ms": round(1000 * min(cpus[name][t]), 1),
                "cpu_runs_ms": [round(1000 * s, 1) for s in cpus[name][t]],
            }
            for t in trees
        }
        for name in cmds
    }
    result = {
        "command": command("startup.py"),
        "trees": {t: str(path) for t, path in trees.items()},
        "python": a.python,
        "bundle": str(a.bundle),
        "repeats": repeats,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "results": results,
        "machine": machine(),
    }
    if tops:
        result["importtime"] = tops
    md = markdown(result)
    write_results(out, result, md)
    print(md)


if __name__ == "__main__":
    main()
