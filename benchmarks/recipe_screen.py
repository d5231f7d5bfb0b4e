"""Screen training-recipe levers on a subset: training seconds and held-out accuracy of each, at equal epochs.

Every lever is NAME=OPTIONS: the `ffedge train` options it adds to the base recipe (`--base`, default the
`fashion` preset, float, no head). Each trains in its own fresh `ffedge train` process on the first `--train`
training and `--test` held-out images of the dataset, and is scored by goodness over every label on those
held-out images (the run's own test accuracy, the float model; nothing here is exported). A lever that costs
more time per epoch is only worth it if it beats a longer run of the base: compare rows at equal training time
(the default levers include the base at twice the epochs for that).

The screen survives being cut: a lever whose row is kept in OUT.json with the same settings is not trained
again, and a run cut short (a checkpoint without metrics.json) continues with `ffedge train --resume`.

    python benchmarks/recipe_screen.py --data-dir ../shared/data                  # the Fashion-MNIST screen
    python benchmarks/recipe_screen.py --data-dir DIR --lever 'wrong3=--wrong-labels 3' --lever 'e12=--epochs 12'
    python benchmarks/recipe_screen.py --quick                                    # 2 levers, 300 digits of mnist-5k
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np

from ffedge.fsutil import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    add_out_option,
    clean,
    command,
    dataset_file,
    embedded_subset,
    machine,
    machine_line,
    out_stem,
    pct,
    read_npz,
    script_parser,
    train,
    work_dir,
    write_results,
)

NAME = "recipe_screen"
BASE = "--preset fashion --epochs 6 --no-quant --qat-epochs 0 --head-epochs 0 --eval-samples 500"
LEVERS = (
    "preset=",
    "preset, 12 epochs (equal time)=--epochs 12",
    "wrong-labels 3=--wrong-labels 3",
    "wider net=--layers 32x5p,96x5p,160x3,160x3",
    "batch 128, lr 0.008=--batch-size 128 --lr 0.008",
    "confused negatives=--negatives confused",
)
QUICK_BASE = "--epochs 1 --no-quant --qat-epochs 0 --head-epochs 0 --eval-samples 0"
QUICK_LEVERS = ("default=", "lr 0.004=--lr 0.004")


def parse_lever(text: str) -> tuple[str, list[str]]:
    """NAME=OPTIONS -> (NAME, [options]); a clear exit for a lever without a name."""
    name, sep, opts = text.partition("=")
    if not sep or not name.strip():
        sys.exit(f"error: --lever {text!r}: write NAME=OPTIONS, e.g. 'lr=--lr 0.004'")
    return name.strip(), shlex.split(opts)


def first_images(src: Path, dst: Path, n_train: int, n_test: int) -> Path:
    """The first n_train training and n_test held-out images of a dataset .npz, written to dst (kept if there)."""
    if not dst.is_file():
        a = read_npz(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.stem + ".tmp.npz")
        np.savez(
            tmp,
            x_train=a["x_train"][:n_train],
            y_train=a["y_train"][:n_train],
            x_test=a["x_test"][:n_test],
            y_test=a["y_test"][:n_test],
        )
        tmp.replace(dst)
    return dst


def main() -> int:
    p = script_parser(__doc__)
    p.add_argument(
        "--dataset", default="fashion_mnist", help="mnist, fashion_mnist or cifar10 (NAME.npz in --data-dir)"
    )
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the dataset's NAME.npz")
    p.add_argument("--train", type=int, default=15000, help="training images used: the first N (default 15,000)")
    p.add_argument("--test", type=int, default=5000, help="held-out images scored: the first N (default 5,000)")
    p.add_argument("--base", default=None, help=f"options every lever starts from (default: '{BASE}')")
    p.add_argument(
        "--lever",
        action="append",
        default=None,
        help="NAME=OPTIONS, repeatable (default: the six levers listed in --help)",
    )
    p.add_argument("--force", action="store_true", help="train every lever again, even one whose row is kept")
    p.add_argument("--quick", action="store_true", help="2 levers, 1 epoch, 300 / 100 digits of the embedded mnist-5k")
    p.add_argument("--work", type=Path, default=None, help="runs (default: runs/bench-recipe_screen[-quick])")
    add_out_option(p, NAME)
    p.epilog = (p.epilog or "") + "\n\ndefault levers:\n" + "\n".join(f"  {lv}" for lv in LEVERS)
    a = p.parse_args()
    out, work = out_stem(NAME, a.out, a.quick), work_dir(f"bench-{NAME}", a.work, a.quick)
    levers = [parse_lever(t) for t in (a.lever or (QUICK_LEVERS if a.quick else LEVERS))]
    if len({n for n, _ in levers}) != len(levers):
        sys.exit("error: two levers have the same name")
    base = shlex.split(a.base if a.base is not None else (QUICK_BASE if a.quick else BASE))
    if a.quick:
        data, label = embedded_subset(work / "data" / "quick.npz", 300, 100), "mnist-5k (300 / 100)"
    else:
        if a.data_dir is None:
            sys.exit("error: pass --data-dir (the folder with the dataset's .npz)")
        src = dataset_file(a.dataset, a.data_dir)
        data = first_images(src, work / "data" / f"{a.dataset}-{a.train}-{a.test}.npz", a.train, a.test)
        label = f"{a.dataset} (first {a.train:,} / {a.test:,})"
    log = out.with_suffix(".log")  # appended to: the commands of the kept rows stay in it
    log.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}
    kept = {r["lever"]: r for r in old.get("rows", [])}
    rows = []
    for name, opts in levers:
        settings = {"dataset": label, "base": base, "options": opts}
        if name in kept and kept[name]["settings"] == settings and not a.force:
            print(f"{name}: kept from {out.with_suffix('.json')} (--force trains it again)", flush=True)
            rows.append(kept[name])
            continue
        run = work / "runs" / "".join(c if c.isalnum() else "-" for c in name)
        stale = a.force or (name in kept and kept[name]["settings"] != settings)
        resume = not stale and (run / "checkpoint.pt").is_file() and not (run / "metrics.json").is_file()
        if not resume:
            clean(run)
        print(f"{name}: training ({' '.join(opts) or 'the base recipe'})", flush=True)
        m = train(f"npz:{data}", run, None, [*base, *opts], log, resume=resume)
        rows.append(
            {
                "lever": name,
                "settings": settings,
                "train_seconds": m["train_seconds"],
                "accuracy": m["test_accuracy"],
                "epochs": m["epochs"],
            }
        )
        print(f"{name}: {pct(m['test_accuracy'])} after {m['train_seconds']:.0f} s of training", flush=True)
        # Only the JSON while levers are left: a cut screen keeps its finished rows and the last complete table.
        atomic_write_json(
            out.with_suffix(".json"),
            {"rows": rows + [r for n, r in kept.items() if n not in {x["lever"] for x in rows}]},
        )
    info = machine()
    md = "| lever | options added | training time | held-out accuracy |\n|---|---|---|---|\n"
    md += "".join(
        f"| {r['lever']} | `{' '.join(r['settings']['options']) or '-'}` | {r['train_seconds']:.0f} s | {pct(r['accuracy'])} |\n"
        for r in rows
    )
    md += (
        f"\n{label}; base: `ffedge train {' '.join(base)}`; accuracy by goodness over every label on the held-out "
        f"images, float model.\n{machine_line(info)}\nCommand: `{command('recipe_screen.py')}`\n"
    )
    write_results(out, {"rows": rows, "base": base, "dataset": label, "machine": info, "quick": a.quick}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
