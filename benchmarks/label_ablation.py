"""Label-encoding ablation: fourier vs morph vs onehot labels on MNIST and CIFAR-10, same network and budget.

Each encoding trains the same default int8 QAT network (`ffedge train --labels
ENC`) on the same class-mixed subset for the same epochs, seed and batch size;
the table gives the Brevitas int8 model's held-out accuracy by goodness over
all labels (the trainer's final score on the whole held-out subset), per layer,
and the softmax head's. The claim under test (SPEC): one-hot labels fail on
CNNs, because the convolutions barely see a few label pixels; Fourier
gratings and morphological labels spread the label over the whole image.

    python benchmarks/label_ablation.py --data-dir ../shared/data
    python benchmarks/label_ablation.py --quick --data-dir ../shared/data   # 1 epoch on 500 training images,
        # into benchmarks/results/quick/; without --datasets, one whose .npz is not there is skipped
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    script_parser,
    SHARED,
    add_out_option,
    choices,
    command,
    dataset_files,
    fresh_log,
    machine,
    out_stem,
    pct,
    skipped_note,
    subset,
    train,  # noqa: E402
    work_dir,
    write_results,
)

from ffedge.labels import ENCODING_NAMES  # noqa: E402

DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
ENCODINGS = ENCODING_NAMES  # every registered label encoding


def markdown(rows: list[dict], info: dict, cmd: str) -> str:
    lines = [
        "| dataset | labels | epochs | train images | held-out accuracy (goodness, all labels) | per layer | head | train time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_layer = " / ".join(f"{100 * v:.1f}" for v in r["per_layer_test_accuracy"])
        lines.append(
            f"| {DATASETS[r['dataset']]} | {r['labels']} | {r['epochs']} | {r['n_train']:,} | **{pct(r['test_accuracy'])}** | "
            f"{per_layer} | {pct(r['head_test_accuracy'])} | {r['train_seconds'] / 60:.1f} min |"
        )
    lines += [
        "",
        f"Held-out: {rows[0]['n_test']:,} test images per dataset (the same for every encoding). "
        f"Machine: {info.get('cpu', '?')}, {info['cpus']} cores, torch {info.get('torch', '-')}.",
        f"Command: `{cmd}`",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = script_parser(__doc__)
    p.add_argument(
        "--datasets",
        default=None,
        help="comma-separated: mnist, cifar10 (default: both; with --quick: those in --data-dir)",
    )
    p.add_argument("--encodings", default=",".join(ENCODINGS), help=f"comma-separated: {', '.join(ENCODINGS)}")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument(
        "--train-images", type=int, default=10000, help="class-mixed training subset (same for every encoding)"
    )
    p.add_argument("--test-images", type=int, default=2000, help="held-out test subset")
    p.add_argument("--data-dir", type=Path, default=SHARED, help="folder with mnist.npz and cifar10.npz")
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="where the runs go (default: runs/bench-labels; with --quick: runs/bench-labels-quick)",
    )
    p.add_argument(
        "--train-args", default="", help="extra ffedge train options for every encoding, e.g. '--layers 32x5p,64x3p'"
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 1 epoch, 500 training and 200 test images")
    add_out_option(p, "label_ablation")
    a = p.parse_args()
    out = out_stem("label_ablation", a.out, a.quick)
    work = work_dir("bench-labels", a.work, a.quick)
    names = choices(p, "--datasets", a.datasets or ",".join(DATASETS), DATASETS)
    paths, skipped = dataset_files(names, a.data_dir, a.quick, a.datasets is not None)
    encodings = choices(p, "--encodings", a.encodings, ENCODINGS)
    if a.quick:
        a.epochs, a.train_images, a.test_images = 1, 500, 200
    log = fresh_log(out)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in paths:
            data = subset(paths[n], Path(tmp) / f"{n}.npz", a.train_images, a.test_images)
            for enc in encodings:
                print(f"{DATASETS[n]}, {enc} labels: train {a.epochs} epoch(s) ...", flush=True)
                m = train(f"npz:{data}", work / f"{n}-{enc}", a.epochs, ["--labels", enc, *a.train_args.split()], log)
                rows.append(
                    {
                        "dataset": n,
                        "labels": enc,
                        "epochs": a.epochs,
                        **{
                            k: m[k]
                            for k in (
                                "n_train",
                                "n_test",
                                "test_accuracy",
                                "per_layer_test_accuracy",
                                "head_test_accuracy",
                                "train_seconds",
                            )
                        },
                    }
                )
                print(f"  held-out {pct(m['test_accuracy'])}, head {pct(m['head_test_accuracy'])}", flush=True)
    info = machine()
    cmd = command("label_ablation.py")
    md = markdown(rows, info, cmd) + skipped_note(skipped)
    write_results(out, {"rows": rows, "machine": info, "command": cmd, "quick": a.quick, "skipped": skipped}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
