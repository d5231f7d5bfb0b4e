"""The layer pipeline (``ffedge.train.layer_pipeline``) on 2 (and 3) gloo processes on localhost: it trains the
weights single-process training trains, writes one ordinary run folder from rank 0 alone, and that run exports.

Equivalence: after one epoch of 38 steps (600 digits, batch 16; int8 QAT, so the quantizers' statistics are
collected on the stages and gathered too) every tensor of ``weights.pt`` is equal to single-process training's
to within 1e-6 (absolute); measured: 0.0 (bit-identical), in fp32 on one thread per process, ``--local layer``
and ``--local pair`` alike. Training stage r one step off (on layer r-1's output computed after its update of
that step instead of before) gave a largest difference of 0.068 (checked once by breaking the schedule), far
outside the tolerance.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Callable

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("brevitas")

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from ffedge.train.distributed import DistContext  # noqa: E402
from ffedge.train.layer_pipeline import resume_pipelined, stage_layers, train_pipelined  # noqa: E402
from ffedge.train.model import FFNet, QuantConfig, parse_layers  # noqa: E402
from ffedge.train.pipeline import train_run  # noqa: E402
from ffedge.train.run_files import CHECKPOINT, CONFIG, METRICS, WEIGHTS, load_torch  # noqa: E402
from ffedge.train.trainer import TrainConfig, build_model, prepare_data  # noqa: E402

LAYERS = "8x5p,16x3p,16x3"
TOLERANCE = 1e-6


def _cfg(dataset: str, local: str) -> TrainConfig:
    return TrainConfig(
        dataset=dataset,
        layers=LAYERS,
        local=local,
        epochs=1,
        batch_size=16,
        head_epochs=1,
        head_augment=0,
        eval_samples=50,
        threads=1,
        precision="fp32",
    )


def _rank(rank: int, world: int, rdzv: str, dataset: str, local: str, outs: list[str]) -> None:
    """One process of the pipeline; rank r is told to write in ``outs[r]`` (only rank 0 may)."""
    dist.init_process_group(
        "gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
    )
    ctx = DistContext(rank, world, rank, world, "cpu", "gloo", timeout_s=120)
    try:
        train_pipelined(_cfg(dataset, local), outs[rank], ctx)
    finally:
        dist.destroy_process_group()


def _pipeline(tmp: Path, dataset: str, local: str, world: int = 2) -> list[Path]:
    outs = [tmp / f"rank{r}" for r in range(world)]
    mp.spawn(_rank, args=(world, str(tmp / "rdzv"), dataset, local, [str(o) for o in outs]), nprocs=world)
    return outs


def _max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = load_torch(a / WEIGHTS), load_torch(b / WEIGHTS)
    assert wa.keys() == wb.keys()
    # Every layer's quantizer scales are there (collected on the stages, gathered to rank 0).
    assert sum("scaling_impl.value" in k for k in wa) == 2 * len(parse_layers(LAYERS))
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def _moved(run: Path, layer: int) -> float:
    """How far training moved layer ``layer``'s conv weights from where the run's seed started them."""
    cfg = TrainConfig.from_dict(json.loads((run / CONFIG).read_text())["train"])
    data = prepare_data(cfg)
    torch.manual_seed(cfg.seed)
    start = build_model(cfg, data.encoding.out_channels, data.dataset.image_shape[1:], data.dataset.num_classes)
    trained = load_torch(run / WEIGHTS)[f"layers.{layer}.conv.weight"]
    return float((trained - start.layers[layer].conv.weight.detach()).abs().max())


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, small_npz: str) -> Callable[[str], Path]:
    """The single-process run of ``_cfg`` per ``--local`` mode (trained once, on first use)."""
    runs: dict[str, Path] = {}

    def run(local: str) -> Path:
        if local not in runs:
            runs[local] = tmp_path_factory.mktemp("single") / local
            train_run(_cfg(small_npz, local), runs[local])
        return runs[local]

    return run


@pytest.mark.parametrize("local", ["layer", "pair"])
def test_pipeline_trains_the_weights_of_one_process(
    tmp_path: Path, small_npz: str, single: Callable[[str], Path], local: str
) -> None:
    outs = _pipeline(tmp_path, small_npz, local)
    one = single(local)
    diff = _max_weight_difference(outs[0], one)
    print(f"--local {local}: max weight difference pipeline vs one process {diff:.3g}")
    assert diff <= TOLERANCE
    # Training moved every layer's weights (by far more than the tolerance): equal weights are the same training.
    assert min(_moved(one, i) for i in range(len(parse_layers(LAYERS)))) > 1e-2
    # Rank 0 alone wrote, and wrote one ordinary run folder (rank 1 was handed a folder of its own to write in).
    assert not outs[1].exists()
    assert {p.name for p in outs[0].iterdir()} == {p.name for p in one.iterdir()}
    history = [json.loads((out / METRICS).read_text())["history"][0] for out in (outs[0], one)]
    assert history[0]["loss"] == history[1]["loss"]


def test_three_stage_pair_pipeline_trains_and_exports(
    tmp_path: Path, small_npz: str, single: Callable[[str], Path]
) -> None:
    """A middle stage receives, sends on and sends gradients back both ways; the run exports as any run does."""
    from ffedge.train.export import export_bundle

    outs = _pipeline(tmp_path, small_npz, "pair", world=3)
    assert _max_weight_difference(outs[0], single("pair")) <= TOLERANCE
    assert not outs[1].exists() and not outs[2].exists()
    bundle = tmp_path / "bundle"
    export_bundle(outs[0], bundle, precision="int8", verify_samples=100, min_agreement=0.9)
    assert (bundle / "manifest.json").is_file()


def test_stages_are_consecutive_and_balanced() -> None:
    net = FFNet(1, (28, 28), 10, parse_layers("16x5p,64x5p,128x3,128x3"), QuantConfig(enabled=False))
    assert stage_layers(net, 1) == [range(0, 4)]
    # MACs per image: 0.31M, 5.0M, 3.6M, 7.2M: the split with the smallest largest stage.
    assert stage_layers(net, 2) == [range(0, 3), range(3, 4)]
    assert stage_layers(net, 4) == [range(i, i + 1) for i in range(4)]


def test_more_stages_than_layers_is_one_clear_error() -> None:
    from ffedge.errors import FFEdgeError
    from ffedge.train.layer_pipeline import check_pipeline

    with pytest.raises(FFEdgeError, match="at least 5 layers"):
        check_pipeline(TrainConfig(), 5)
    with pytest.raises(FFEdgeError, match="negatives hard"):
        check_pipeline(TrainConfig(negatives="hard"), 2)


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--parallel", "layers"), "add --nproc N, or start under torchrun"),
        (("--parallel", "rows", "--nproc", "2"), "'rows' is not one of 'data', 'layers'"),
    ],
)
def test_cli_parallel_errors_are_one_line(args: tuple[str, ...], needle: str) -> None:
    from tests.conftest import assert_one_line_error, cli_inprocess

    assert_one_line_error(cli_inprocess("train", *args), needle, code=None)


def test_a_restored_checkpoint_trains_every_parameter(tiny_run: Path) -> None:
    """Brevitas replaces the activation scales' parameters when a state is loaded: the restored optimizers must
    hold the new ones, or the scales would stop training after a resume (or after a pipeline gathers a stage)."""
    from ffedge.train.checkpoint import read_checkpoint, restore
    from ffedge.train.trainer import LocalTrainer

    cfg = TrainConfig.from_dict(json.loads((tiny_run / CONFIG).read_text())["train"])
    state = read_checkpoint(tiny_run, cfg.epochs)
    assert state is not None
    data = prepare_data(cfg)
    net = build_model(cfg, data.encoding.out_channels, data.dataset.image_shape[1:], data.dataset.num_classes)
    trainer = LocalTrainer(net, cfg)
    restore(net, trainer, state, tiny_run / CHECKPOINT)
    for layer, opt in zip(net.layers, trainer.optimizers):
        held = {id(p) for group in opt.param_groups for p in group["params"]}
        assert all(id(p) in held for p in layer.parameters())
        assert sum("scaling_impl.value" in name for name, _ in layer.named_parameters()) == 2


def _resume_rank(rank: int, world: int, rdzv: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    try:
        resume_pipelined(out, DistContext(rank, world, rank, world, "cpu", "gloo", timeout_s=120), epochs=2)
    finally:
        dist.destroy_process_group()


def test_a_one_process_run_resumes_as_a_pipeline(tmp_path: Path, single: Callable[[str], Path]) -> None:
    """The checkpoint of one process, continued by a 2-stage pipeline: the weights of continuing it in one process."""
    import shutil

    from ffedge.train.pipeline import resume_run

    piped, alone = tmp_path / "piped", tmp_path / "alone"
    for copy in (piped, alone):
        shutil.copytree(single("layer"), copy)
    mp.spawn(_resume_rank, args=(2, str(tmp_path / "rdzv"), str(piped)), nprocs=2)
    resume_run(alone, epochs=2)
    assert len(json.loads((piped / METRICS).read_text())["history"]) == 2
    assert _max_weight_difference(piped, alone) <= TOLERANCE
