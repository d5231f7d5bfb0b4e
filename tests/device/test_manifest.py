"""The typed manifest, bundle integrity and graph contracts, and the checked options of eval/predict/bench.

A malformed manifest, a file outside the bundle or behind a link, and a valid ONNX file that is not the one the
manifest describes are each one ``error:`` line (exit 2) in ``ffedge info`` and ``ffedge predict``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from ffedge.bundle import MANIFEST, open_bundle
from ffedge.errors import FFEdgeError
from ffedge.bundle.manifest import Manifest, manifest_json, parse_manifest
from tests.conftest import assert_one_line_error, cli, cli_inprocess


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edited(src: Path, dst: Path, edit: Callable[[Path, dict[str, Any]], Any]) -> Path:
    """A copy of bundle ``src`` at ``dst`` whose manifest (and files) ``edit`` changed; a str it returns is the raw manifest text."""
    shutil.copytree(src, dst)
    m = json.loads((dst / MANIFEST).read_text())
    text = edit(dst, m)
    (dst / MANIFEST).write_text(text if isinstance(text, str) else json.dumps(m, indent=1))
    return dst


def _set(path: str, value: Any) -> Callable[[Path, dict[str, Any]], None]:
    def edit(_: Path, m: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for p in parents:
            m = m[p]
        m[last] = value

    return edit


@pytest.fixture(scope="module")
def x_npy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ffedge.datasets import load_dataset

    path = tmp_path_factory.mktemp("x") / "x.npy"
    np.save(path, load_dataset("mnist-5k").x_test[:2, :, :, 0])
    return path


def test_exported_manifests_round_trip(golden_int8: Path, golden_fp32: Path) -> None:
    for bundle in (golden_int8, golden_fp32):
        text = (bundle / MANIFEST).read_text()
        m = parse_manifest(json.loads(text), bundle / MANIFEST)
        assert isinstance(m, Manifest) and m.to_dict() == json.loads(text)
        assert manifest_json(m) == text  # the exporter writes through the same writer: byte for byte
        assert open_bundle(bundle).manifest == m
    # Unknown keys (a newer ffedge's) survive a round trip, at the top level and inside entries.
    raw = json.loads((golden_int8 / MANIFEST).read_text())
    raw["future"] = {"x": [1, None]}
    raw["layers"][1]["future"] = "kept"
    raw["input"]["pixels"] = "as written"
    m = parse_manifest(raw)
    assert m.to_dict() == raw and m.extra == {"future": {"x": [1, None]}} and m.layers[1].extra == {"future": "kept"}
    assert m.layers[0].quant is not None and m.head is not None and m.head.layers == raw["head"]["layers"]


def _nan_std(_: Path, m: dict[str, Any]) -> str:
    m["input"]["std"] = [float("nan")]
    return json.dumps(m)


def _dotdot(b: Path, m: dict[str, Any]) -> None:
    m["files"]["../outside.onnx"] = m["files"]["net.onnx"]


MALFORMED = [
    ("layers=[1,2]", _set("layers", [1, 2]), "'layers[0]' must be a layer entry"),
    ("classes=5", _set("classes", 5), "'classes' must be a list of 2.."),
    ("input.shape=[1,10**6,10**6]", _set("input.shape", [1, 10**6, 10**6]), "'input.shape' must be [C, H, W]"),
    ("std=[0]", _set("input.std", [0]), "'input.std' must be a list of 1 finite number(s) > 0"),
    ("std=[NaN]", _nan_std, "'input.std' must be a list of 1 finite number(s) > 0 (one per channel), got [nan]"),
    ('bundle_version="two"', _set("bundle_version", "two"), "'bundle_version' must be an integer"),
    ("history=5", _set("history", 5), "'history' must be a list of update records, got 5"),
    ("head.layers=[99]", _set("head.layers", [99]), "'head.layers' must list distinct layer numbers in 0..2, got [99]"),
    ("head.grid=0", _set("head.grid", 0), "'head.grid' must be an integer in 1..16, got 0"),
    ("head.grid=8 on 7x7", _set("head.grid", 8), "'head.grid' must fit layer 2's 7x7 activity, got 8"),
    ("fused.file absolute", _set("fused.file", "/etc/passwd"), "'fused.file' must name a listed file"),
    ("master.file unlisted", _set("master", {"file": "elsewhere.npz"}), "'master.file' must name a listed file"),
    (
        "label array is an onnx file",
        _set("label_arrays.patterns", "head.onnx"),
        "'label_arrays.patterns' must name a .npy file",
    ),
    ("files with ..", _dotdot, "'files' must be a plain relative path inside the bundle"),
    ("sha256 not hex", lambda b, m: m["files"].update({"layer0.onnx": "abc"}), "map 'layer0.onnx' to a sha256 digest"),
    (
        "encoding for 5 classes",
        _set("encoding.num_classes", 5),
        "'encoding.num_classes' must be the number of classes (10)",
    ),
    ("layers do not chain", _set("layers.1.in_shape", [3, 14, 14]), "'layers[1].in_shape' must be layer 0's out_shape"),
    (
        "quant scale 0",
        _set("layers.0.quant.output_scale", 0),
        "'layers[0].quant.output_scale' must be a finite number > 0",
    ),
    (
        "newline in precision",
        _set("precision", "int8\nerror: forged line"),
        r"unknown precision 'int8\nerror: forged line'",
    ),
]


def test_head_grid_absent_is_1_and_must_fit_the_graphs(golden_int8: Path, tmp_path: Path) -> None:
    """The golden bundles' head reads a 2x2 grid (features [N, 4C]). Without ``head.grid`` (as in bundles made before
    the key) a manifest reads as grid 1 and round-trips without the key; for these graphs that is refused when they
    are opened (features [N, 4C] are not [N, C])."""
    from ffedge.runtime import Runtime

    m = open_bundle(golden_int8).manifest
    assert m.head is not None and m.head.grid == 2 and m.head.cells == 4

    def drop_grid(_: Path, d: dict[str, Any]) -> None:
        del d["head"]["grid"]

    b = _edited(golden_int8, tmp_path / "b", drop_grid)
    old = open_bundle(b).manifest
    assert old.head is not None and old.head.grid is None and old.head.grid_size == 1 and old.head.cells == 1
    assert "grid" not in old.to_dict()["head"]  # round-trips without the key
    with pytest.raises(FFEdgeError, match="does not fit the manifest"):
        Runtime(b)


@pytest.mark.parametrize("case, edit, needle", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_manifest_is_one_line_naming_the_key(
    golden_int8: Path, tmp_path: Path, x_npy: Path, case: str, edit: Callable, needle: str
) -> None:
    b = _edited(golden_int8, tmp_path / "b", edit)
    with pytest.raises(FFEdgeError, match="manifest.json"):
        open_bundle(b)
    for args in (("info", str(b)), ("predict", str(b), str(x_npy))):
        assert_one_line_error(cli_inprocess(*args), needle)


def test_an_encoding_number_too_large_for_a_float_is_one_line(golden_int8: Path, tmp_path: Path, x_npy: Path) -> None:
    """Found by the long manifest fuzz: an int beyond float range in the encoding raised OverflowError."""
    b = _edited(golden_int8, tmp_path / "b", _set("encoding.phases.8", 10**400))
    with pytest.raises(FFEdgeError, match="label encoding: fourier phases must be a finite number within"):
        open_bundle(b)
    for args in (("info", str(b)), ("predict", str(b), str(x_npy))):
        assert_one_line_error(cli_inprocess(*args), "fourier phases must be a finite number within")


def test_the_cli_as_a_user_runs_it(golden_int8: Path, tmp_path: Path, x_npy: Path) -> None:
    b = _edited(golden_int8, tmp_path / "b", _set("classes", 5))
    assert_one_line_error(cli("predict", str(b), str(x_npy), timeout=120), "'classes' must be a list")


def _copy_over(src: str, dst: str) -> Callable[[Path, dict[str, Any]], None]:
    def edit(b: Path, m: dict[str, Any]) -> None:
        shutil.copyfile(b / src, b / dst)
        m["files"][dst] = _sha(b / dst)

    return edit


def test_a_graph_that_is_not_the_one_described_is_one_line_in_every_mode(
    golden_int8: Path, tmp_path: Path, x_npy: Path
) -> None:
    # net.onnx serves the neutral pass of head (all runs on the shared graph, opened in every mode; topk on the
    # top-k graph, opened by mode topk).
    net = _edited(golden_int8, tmp_path / "net", _copy_over("layer0.onnx", "net.onnx"))
    assert_one_line_error(
        cli_inprocess("predict", str(net), str(x_npy), "--mode", "head"),
        "'net.onnx' (fused) does not fit the manifest: its outputs are ['y', 'goodness', 'feature']",
    )
    topk = _edited(golden_int8, tmp_path / "topk", _copy_over("layer0.onnx", "net_topk.onnx"))
    assert_one_line_error(
        cli_inprocess("predict", str(topk), str(x_npy), "--mode", "topk"),
        "'net_topk.onnx' (topk) does not fit the manifest: its inputs are ['x'], expected ['x', 'k']",
    )
    shared = _edited(golden_int8, tmp_path / "shared", _copy_over("layer0.onnx", "net_shared.onnx"))
    for mode in ("all", "head", "topk"):
        assert_one_line_error(
            cli_inprocess("predict", str(shared), str(x_npy), "--mode", mode),
            "'net_shared.onnx' (shared) does not fit the manifest: its inputs are ['x']",
        )
    head = _edited(golden_int8, tmp_path / "head", _copy_over("layer0.onnx", "head.onnx"))
    r = cli("predict", str(head), str(x_npy), "--mode", "head", timeout=120)
    assert_one_line_error(
        r, "'head.onnx' (head) does not fit the manifest: its inputs are ['x'], expected ['f1', 'f2']"
    )
    # A layer file is checked where it is opened (info, bench, finetune), against its own entry.
    layer = _edited(golden_int8, tmp_path / "layer", _copy_over("layer0.onnx", "layer1.onnx"))
    assert_one_line_error(
        cli_inprocess("info", str(layer)), "'layer1.onnx' (layer 1) does not fit the manifest: input 'x'"
    )
    # A head for another number of classes (no consistent 9-class bundle holds a 10-class head: checked directly).
    from ffedge.runtime import Graph, check_graph, make_session

    b = open_bundle(golden_int8)
    nine = dataclasses.replace(b, manifest=dataclasses.replace(b.manifest, classes=b.manifest.classes[:9]))
    head = Graph(make_session(golden_int8 / "head.onnx", threads=1), "head.onnx")
    check_graph(head, "head", b)
    with pytest.raises(FFEdgeError, match=r"output 'probs' is tensor\(float\) \['n', 10\], expected float \['N', 9\]"):
        check_graph(head, "head", nine)


def test_info_loads_and_checks_every_file(golden_int8: Path, tmp_path: Path) -> None:
    r = cli_inprocess("info", str(golden_int8), "--json")
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout)["loaded"]
    assert set(loaded) == set(json.loads((golden_int8 / MANIFEST).read_text())["files"])
    assert all(
        "onnxruntime" in loaded[n] for n in ("layer0.onnx", "layer1.onnx", "layer2.onnx", "net.onnx", "head.onnx")
    )
    assert "no pickles" in loaded["labels_patterns.npy"]
    text = cli_inprocess("info", str(golden_int8)).stdout
    assert (
        "checksums: ok" in text
        and "loaded and checked:" in text
        and "layer2.onnx: sha256, opened with onnxruntime" in text
    )

    def truncate(b: Path, m: dict[str, Any]) -> None:
        data = (b / "layer0.onnx").read_bytes()
        (b / "layer0.onnx").write_bytes(data[: len(data) // 2])
        m["files"]["layer0.onnx"] = _sha(b / "layer0.onnx")

    b = _edited(golden_int8, tmp_path / "cut", truncate)
    assert_one_line_error(cli("info", str(b), timeout=120), "layer0.onnx: onnxruntime cannot load it")


def _checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_links_and_paths_out_of_the_bundle_are_refused(golden_int8: Path, tmp_path: Path, x_npy: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "notes.txt").write_text("a user's file")
    before = _checksums(outside)
    linked = _edited(golden_int8, tmp_path / "versions-link", lambda b, m: os.symlink(outside, b / "versions"))
    for args in (("info", str(linked)), ("predict", str(linked), str(x_npy)), ("rollback", str(linked))):
        assert_one_line_error(cli_inprocess(*args), "versions' is a symbolic link")
    with pytest.raises(FFEdgeError, match="symbolic link"):
        from ffedge.bundle.update import commit_update

        commit_update(linked, {"head.onnx": (golden_int8 / "head.onnx").read_bytes()}, {}, {})
    assert _checksums(outside) == before

    def link_head(b: Path, m: dict[str, Any]) -> None:
        shutil.move(b / "head.onnx", outside / "head.onnx")
        os.symlink(outside / "head.onnx", b / "head.onnx")

    head = _edited(golden_int8, tmp_path / "head-link", link_head)
    assert_one_line_error(
        cli_inprocess("predict", str(head), str(x_npy)), "'head.onnx' is or passes through a symbolic link"
    )

    def fused_elsewhere(
        b: Path, m: dict[str, Any]
    ) -> None:  # today's main ran predictions on it and said "checksums ok"
        shutil.copyfile(b / "net.onnx", outside / "net.onnx")
        m["fused"]["file"] = str(outside / "net.onnx")

    fused = _edited(golden_int8, tmp_path / "fused", fused_elsewhere)
    for args in (("info", str(fused)), ("predict", str(fused), str(x_npy))):
        assert_one_line_error(cli_inprocess(*args), "'fused.file' must name a listed file")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["eval", "{b}", "--threads", "100000"], "--threads must be between 1 and"),
        (["eval", "{b}", "--threads", "-1"], "--threads must be between 1 and"),
        (["eval", "{b}", "--latency-images", "-5"], "--latency-images must be >= 0, got -5"),
        (["eval", "{b}", "--limit", "-5"], "--limit must be >= 1, got -5"),
        (["eval", "{b}", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["eval", "{b}", "--mode", "topk", "--k", "0"], "--k must be >= 1, got 0"),
        (["eval", "{b}", "--mode", "topk", "--k", "11"], "--k must be between 1 and 10, got 11"),
        (["eval", "{b}", "--mode", "nosuch"], "'--mode': 'nosuch' is not one of 'all', 'head', 'topk'"),
        (["predict", "{b}", "{x}", "--threads", "0"], "--threads must be between 1 and"),
        (["predict", "{b}", "{x}", "--mode", "topk", "--k", "0"], "--k must be >= 1, got 0"),
        (["predict", "{b}", "{x}", "--top", "0"], "--top must be >= 1, got 0"),
        (["bench", "{b}", "--threads", "100000"], "--threads must be between 1 and"),
        (["bench", "{b}", "--iters", "0"], "--iters must be >= 1, got 0"),
        (["bench", "{b}", "--warmup", "-1"], "--warmup must be >= 0, got -1"),
        (["bench", "{b}", "--limit", "0"], "--limit must be >= 1, got 0"),
        (["bench", "{b}", "--batch", "0"], "--batch must be >= 1, got 0"),
        (["bench", "{b}", "--gemm-size", "0"], "--gemm-size must be between 1 and 8192, got 0"),
    ],
)
def test_options_are_checked_before_any_work(golden_int8: Path, x_npy: Path, args: list[str], needle: str) -> None:
    argv = [a.format(b=golden_int8, x=x_npy) for a in args]
    assert_one_line_error(cli_inprocess(*argv), needle)


def test_eval_with_absurd_threads_fails_at_once(golden_int8: Path) -> None:
    """Today's main hung here (onnxruntime starting 100000 threads)."""
    assert_one_line_error(
        cli("eval", str(golden_int8), "--threads", "100000", timeout=60), "--threads must be between 1 and"
    )


def test_a_manifest_that_is_a_named_pipe_does_not_hang(golden_int8: Path, tmp_path: Path) -> None:
    b = _edited(golden_int8, tmp_path / "b", lambda b, m: None)
    (b / MANIFEST).unlink()
    os.mkfifo(b / MANIFEST)
    assert_one_line_error(cli("info", str(b), timeout=60), "unreadable manifest (ValueError: not a regular file)")
