"""The install checks (scripts/check-wheel, scripts/check-aarch64) refuse bad arguments with one line and exit 2,
before building or installing anything; their real runs are CI's (.ci/run), minutes each."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize(
    ("script", "args", "needle"),
    [
        ("check-wheel", ["--bogus"], "unknown argument '--bogus'"),
        ("check-wheel", ["--dist"], "--dist needs a value"),
        ("check-aarch64", ["--cache", "/tmp", "--images"], "--images needs a value"),
        ("check-aarch64", ["--frobnicate"], "unknown argument '--frobnicate'"),
        ("check-aarch64", ["--images", "0"], "--images must be 1..1000"),
        ("check-aarch64", ["--images", "ten"], "--images must be 1..1000"),
    ],
)
def test_bad_argument_is_one_line_and_exit_2(script: str, args: list[str], needle: str) -> None:
    r = subprocess.run([str(REPO / "scripts" / script), *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [f"{script}: {needle} (--help lists the options)"] and r.stdout == ""


@pytest.mark.parametrize("script", ["check-wheel", "check-aarch64"])
def test_help_prints_the_usage_and_exits_0(script: str) -> None:
    r = subprocess.run([str(REPO / "scripts" / script), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == ""
    assert f"scripts/{script} [" in r.stdout


def test_aarch64_check_on_a_missing_bundle_fails_with_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = subprocess.run(
        [str(REPO / "scripts" / "check-aarch64"), "--bundle", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and r.stdout == ""
    # as root the bundle is checked first; otherwise the root check speaks first
    assert r.stderr.strip() in (
        f"check-aarch64: FAILED: no bundle at {tmp_path / 'none'} (no manifest.json)",
        "check-aarch64: FAILED: needs root (debootstrap, chroot and mounts): run it with sudo",
    ), r.stderr


def test_aarch64_check_refuses_a_cache_folder_it_did_not_make(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "mine.txt").write_text("a user's file")
    r = subprocess.run(
        [str(REPO / "scripts" / "check-aarch64"), "--cache", str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() in (
        f"check-aarch64: FAILED: {tmp_path} is not empty and is not a check-aarch64 cache (no lock file in it): "
        "choose another --cache",
        "check-aarch64: FAILED: needs root (debootstrap, chroot and mounts): run it with sudo",
    ), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
