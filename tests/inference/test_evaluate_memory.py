"""Evaluation reads one case at a time: memory does not grow with the number of cases.

The peak RSS over 4 vs 44 LA-sized phantoms is in benchmarks/RESULTS.md
(``benchmarks/bench_eval_memory.py``); this test pins the mechanism, deterministically.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch

import vasseg.data.la as la
from vasseg.data.synthetic import write_phantom_la_layout
from vasseg.inference.evaluate import evaluate_run


def test_evaluate_holds_at_most_two_cases_at_once(trained: Path, tmp_path: Path, monkeypatch) -> None:
    root = write_phantom_la_layout(tmp_path / "LA", n_train=1, n_test=6, shape=(20, 20, 20), seed=3)
    images: list[weakref.ref[torch.Tensor]] = []
    peak = [0]
    real = la.read_la_case

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - read_la_case's signature
        peak[0] = max(peak[0], 1 + sum(ref() is not None for ref in images))  # alive + the one read now
        case = real(*args, **kwargs)
        images.append(weakref.ref(case.image))
        return case

    monkeypatch.setattr(la, "read_la_case", counted)
    out, table = evaluate_run(trained, "test", data_root=str(root), device="cpu", out=str(tmp_path / "e"),
                              progress=False)
    assert len(images) == 6 and "(6 cases)" in table
    assert peak[0] <= 2, f"{peak[0]} cases in memory at once"
    assert len((out / "cases.csv").read_text().splitlines()) == 1 + 6
