"""The tracked tree stays small enough to travel to a device beside the data (issue 30): committed
run folders keep their scalars gzipped, and ``vasseg report`` still reads them."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vasseg.report.collect import read_scalars

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import compress_scalars  # noqa: E402


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [n for n in out.decode().split("\0") if n]


def test_no_tracked_scalars_log_is_uncompressed() -> None:
    raw = [n for n in _tracked() if n.endswith("scalars.jsonl")]
    assert not raw, f"run `python benchmarks/compress_scalars.py`: {raw[:3]}"


def test_tracked_tree_fits_the_device_share() -> None:
    _tracked()
    assert compress_scalars.tracked_mib(REPO) <= compress_scalars.TREE_LIMIT_MIB


def test_committed_run_folders_still_give_their_curves() -> None:
    logs = [REPO / n for n in _tracked() if n.endswith("scalars.jsonl.gz")]
    assert logs
    for log in logs:
        rows = read_scalars(log.parent)
        assert rows and "step" in rows[0], log


def test_compress_round_trips_and_the_reader_takes_either(tmp_path: Path) -> None:
    run = tmp_path / "benchmarks" / "run"
    run.mkdir(parents=True)
    text = "".join(json.dumps({"step": i, "loss": 1.0 / (i + 1), "phase": "main"}) + "\n" for i in range(50))
    (run / "scalars.jsonl").write_text(text)
    plain = read_scalars(run)
    assert compress_scalars.main(["--root", str(tmp_path), "--check"]) == 1
    compress_scalars.compress(run / "scalars.jsonl")
    assert not (run / "scalars.jsonl").exists()
    rows = read_scalars(run)
    assert len(rows) == len(plain) == 50
    for got, want in zip(rows, plain):  # floats to 4 significant digits, the rest untouched
        assert got.keys() == want.keys() and got["step"] == want["step"] and got["phase"] == "main"
        assert got["loss"] == pytest.approx(want["loss"], rel=5e-4) and got["loss"] != 0
    stored = (run / "scalars.jsonl.gz").read_bytes()
    assert compress_scalars.reround(run / "scalars.jsonl.gz") is False  # idempotent
    assert (run / "scalars.jsonl.gz").read_bytes() == stored
    assert compress_scalars.main(["--root", str(tmp_path), "--check"]) == 0
    (run / "scalars.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="scalars.jsonl.gz: unreadable"):
        read_scalars(run)


def test_an_older_full_precision_log_is_rounded_in_place(tmp_path: Path) -> None:
    log = tmp_path / "scalars.jsonl.gz"
    log.write_bytes(gzip.compress(b'{"step": 0, "loss": 0.123456789012, "lr": 0.01}\n'))
    assert compress_scalars.reround(log) is True
    assert gzip.decompress(log.read_bytes()) == b'{"step":0,"loss":0.1235,"lr":0.01}\n'


def test_an_archived_log_keeps_window_means_once(tmp_path: Path) -> None:
    rows = [{"step": i, "loss": float(i), "lr": 0.01, "phase": "main", "n": i % 2} for i in range(25)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    got = [json.loads(line) for line in compress_scalars.windowed_log(text, window=10).splitlines()]
    assert [r["step"] for r in got] == [9, 19, 24]  # the short last block keeps the last step
    assert [r["loss"] for r in got] == [4.5, 14.5, 22.0] and all(r["lr"] == 0.01 for r in got)
    assert got[0]["phase"] == "main" and got[0]["n"] == 0.5
    windowed = compress_scalars.windowed_log(text, window=10)
    assert compress_scalars.windowed_log(windowed, window=10) == windowed  # idempotent
    run = tmp_path / "benchmarks" / compress_scalars.ARCHIVED[0] / "run"
    run.mkdir(parents=True)
    (run / "scalars.jsonl").write_text(text)
    assert compress_scalars.archived(run / "scalars.jsonl", tmp_path / "benchmarks")
    assert not compress_scalars.archived(tmp_path / "benchmarks" / "other" / "scalars.jsonl", tmp_path / "benchmarks")
    compress_scalars.compress(run / "scalars.jsonl", window=True)
    assert [r["step"] for r in read_scalars(run)] == [9, 19, 24]
    assert compress_scalars.reround(run / "scalars.jsonl.gz", window=True) is False
