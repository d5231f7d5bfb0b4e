"""Which layers the softmax head should read: head, top-2 and `topk --k 2` accuracy of each choice, on one run's layers.

The FF layers of a finished run stay as they are; for each set of head layers a fresh head is fitted the way
`ffedge train` fits it (the run's --head-grid, --head-augment copies, --head-epochs, seed), on the neutral-label
features of the training images, and scored on the held-out images: its top-1 accuracy (mode `head`), how often
the true label is among its top 2, and the accuracy of `topk --k 2` (goodness over the run's prediction layers
decides between the head's two labels). Goodness over all labels (mode `all`) is the same for every row. All in
torch on the run's (fake-quantized) model, as the trainer scores a run; nothing is exported. The neutral pass of
`topk` stops at the last head layer, so a set without the last layer makes `topk` cheaper.

    python benchmarks/head_layers.py runs/mnist-5k                           # the default sets
    python benchmarks/head_layers.py runs/cifar10 --sets '1,2,3;0,1,2' --out benchmarks/results/head_layers-cifar10
    python benchmarks/head_layers.py --quick                                  # trains a tiny run on 300 digits first
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    add_out_option,
    command,
    embedded_subset,
    fresh_log,
    machine,
    machine_line,
    out_stem,
    pct,
    script_parser,
    train,
    work_dir,
    write_results,
)

DEFAULT_SETS = "1,2,3;0,1,2;1,2;2,3;0,1"


def parse_sets(text: str, n_layers: int) -> list[list[int]]:
    """``"1,2,3;0,1,2"`` -> [[1, 2, 3], [0, 1, 2]]; sets naming a layer the run lacks are a clear exit."""
    sets = []
    for part in text.split(";"):
        if not part.strip():
            continue
        try:
            layers = [int(v) for v in part.split(",")]
        except ValueError:
            sys.exit(f"error: --sets: {part!r} is not comma-separated layer numbers")
        if not layers or any(not 0 <= i < n_layers for i in layers) or len(set(layers)) != len(layers):
            sys.exit(f"error: --sets: {part!r} does not name distinct layers of 0..{n_layers - 1}")
        sets.append(layers)
    if not sets:
        sys.exit("error: --sets is empty")
    return sets


def per_layer_features(net: Any, enc: Any, x: np.ndarray, grid: int, batch: int = 500) -> list[Any]:
    """Each layer's head feature (pooled to the grid, each cell normalized) of neutral passes: [N, C * grid^2]."""
    import torch

    out: list[list[Any]] = [[] for _ in net.layers]
    with torch.no_grad():
        for s in range(0, len(x), batch):
            hs = net.forward_layers(torch.from_numpy(enc.neutral(x[s : s + batch])))
            for i in range(len(hs)):
                out[i].append(net.head_features(hs, [i], grid))
    return [torch.cat(o) for o in out]


def measure(run: Path, sets_text: str, threads: int, data_dir: Path | None = None) -> dict[str, Any]:
    import torch

    from ffedge.labels import encoding_from_config
    from ffedge.train.run_files import load_run
    from ffedge.train.trainer import TrainConfig, augment, fit_head, goodness_matrix, prepare_data

    torch.set_num_threads(threads)
    cfg, net = load_run(run)
    tcfg = TrainConfig.from_dict(cfg["train"])
    if data_dir is not None:
        tcfg.data_dir = str(data_dir)
    data = prepare_data(tcfg, encoding_from_config(cfg["encoding"]))
    sets = parse_sets(sets_text, len(net.layers))
    grid, enc, y = net.head_grid, data.encoding, data.dataset.y_test
    t0 = time.perf_counter()
    # The head's training set as head_training_features builds it, per layer: the images, then the copies.
    train_parts = [per_layer_features(net, enc, data.x_train, grid)]
    rng = np.random.default_rng([tcfg.seed, 13])
    fill = np.array([-m / s for m, s in zip(data.mean, data.std)], np.float32)
    for _ in range(tcfg.head_augment):
        xa = np.concatenate(
            [
                augment(data.x_train[s : s + 500], tcfg.shift, tcfg.flip, fill, rng, tcfg.rotate, tcfg.scale)
                for s in range(0, len(data.x_train), 500)
            ]
        ).astype(np.float32, copy=False)
        train_parts.append(per_layer_features(net, enc, xa, grid))
    f_train = [torch.cat([p[i] for p in train_parts]) for i in range(len(net.layers))]
    y_train = np.tile(data.dataset.y_train, 1 + tcfg.head_augment)
    f_test = per_layer_features(net, enc, data.x_test, grid)
    predict = list(cfg["model"]["predict_layers"])
    g = goodness_matrix(net, enc, data.x_test, tcfg.device)[predict].sum(0)  # [N, K]
    rows = []
    for layers in sets:
        torch.manual_seed(tcfg.seed)
        net.head = torch.nn.Linear(sum(f_train[i].shape[1] for i in layers), len(cfg["classes"]))
        fit_head(net, torch.cat([f_train[i] for i in layers], 1), y_train, tcfg.head_epochs, tcfg.seed)
        with torch.no_grad():
            logits = net.head(torch.cat([f_test[i] for i in layers], 1)).numpy()
        top2 = np.argsort(-logits, axis=1, kind="stable")[:, :2]
        pick = top2[np.arange(len(y)), np.take_along_axis(g, top2, 1).argmax(1)]
        rows.append(
            {
                "head_layers": layers,
                "features": int(sum(f_train[i].shape[1] for i in layers)),
                "head": float((logits.argmax(1) == y).mean()),
                "top2_recall": float((top2 == y[:, None]).any(1).mean()),
                "topk2": float((pick == y).mean()),
            }
        )
        print(
            f"head layers {layers}: head {pct(rows[-1]['head'])}, top-2 {pct(rows[-1]['top2_recall'])}, "
            f"topk --k 2 {pct(rows[-1]['topk2'])}",
            flush=True,
        )
    return {
        "run": str(run),
        "dataset": tcfg.dataset,
        "n_train": int(len(data.x_train)),
        "n_test": int(len(y)),
        "layers": cfg["model"]["layers"],
        "predict_layers": predict,
        "run_head_layers": list(cfg["train"].get("head_layers") or []),
        "head_grid": grid,
        "head_augment": tcfg.head_augment,
        "head_epochs": tcfg.head_epochs,
        "all": float((g.argmax(1) == y).mean()),
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Head layers: which layers the softmax head reads",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Run `{result['run']}` ({result['dataset']}, layers {result['layers']}, {result['n_train']} training / "
        f"{result['n_test']} held-out images); heads fitted like the trainer's (grid {result['head_grid']}, "
        f"{result['head_augment']} augmented copies, {result['head_epochs']} epochs). Goodness over all labels "
        f"(layers {result['predict_layers']}): **{pct(result['all'])}**.",
        "",
        "| head layers | features | head | true label in the head's top 2 | `topk --k 2` |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        layers = ",".join(map(str, r["head_layers"]))
        lines.append(f"| {layers} | {r['features']} | {pct(r['head'])} | {pct(r['top2_recall'])} | {pct(r['topk2'])} |")
    lines += ["", machine_line(result["machine"]), ""]
    return "\n".join(lines)


def main() -> None:
    p = script_parser(__doc__ or "")
    p.add_argument("run", type=Path, nargs="?", help="a finished training run (not with --quick)")
    p.add_argument("--sets", default=DEFAULT_SETS, help=f"head layer sets, ';'-separated (default {DEFAULT_SETS!r})")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=None, help="where the run's dataset is (default: the run's own)")
    p.add_argument("--quick", action="store_true", help="train a tiny run on 300 digits and compare two sets")
    add_out_option(p, "head_layers")
    a = p.parse_args()
    if (a.run is None) == (not a.quick):
        p.error("give a run, or --quick (which trains its own)")
    out = out_stem("head_layers", a.out, a.quick)
    sets = a.sets
    run = a.run
    if a.quick:
        work = work_dir("bench-head_layers", None, True)
        data = embedded_subset(work / "digits.npz", 300, 200)
        run = work / "run"
        log = fresh_log(out)
        extra = ["--layers", "8x5p,16x3p,16x3", "--head-epochs", "2", "--head-augment", "1", "--eval-samples", "10"]
        train(f"npz:{data}", run, 1, extra, log)
        if sets == DEFAULT_SETS:
            sets = "1,2;0,1"
    elif not (run / "weights.pt").is_file():
        sys.exit(f"error: {run} is not a finished training run (no weights.pt)")
    result = measure(run, sets, a.threads, a.data_dir)
    result.update(command=command("head_layers.py"), quick=a.quick, machine=machine())
    write_results(out, result, markdown(result))
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
