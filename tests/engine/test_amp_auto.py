"""train.amp=auto: bf16 where the device computes it natively (CPU included), fp32 elsewhere; the
resolved precision is logged, recorded in every checkpoint, and a resume on a host that resolves it
differently says so."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from vasseg.engine.checkpoint import latest_checkpoint, load_checkpoint, warn_precision_change
from vasseg.engine.run import train_experiment
from vasseg.engine.setup import autocast_dtype, describe_amp
from vasseg.inferer import precision

CPU = torch.device("cpu")


def _host(monkeypatch: pytest.MonkeyPatch, bf16: bool) -> None:
    """Pretend this CPU has (or lacks) bf16 instructions."""
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: bf16)
    monkeypatch.setattr(precision, "cpu_bf16_reason", lambda cpuinfo=None: "avx512_bf16" if bf16 else None)


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_follows_the_cpu(tiny, monkeypatch: pytest.MonkeyPatch, bf16: bool) -> None:
    _host(monkeypatch, bf16)
    exp = tiny("supervised")
    assert exp.train.amp == "auto"
    assert autocast_dtype(exp, CPU) is (torch.bfloat16 if bf16 else None)
    assert describe_amp(exp, CPU) == ("bf16 (auto: CPU has avx512_bf16)" if bf16 else
                                      f"fp32 (auto: CPU has no bf16 instructions (PyTorch kernels: "
                                      f"{torch.backends.cpu.get_cpu_capability()}))")


@pytest.mark.parametrize("amp, dtype, phrase", [("none", None, "fp32 (train.amp=none)"),
                                                ("bf16", torch.bfloat16, "bf16 (train.amp=bf16)")])
def test_explicit_amp_ignores_the_cpu(tiny, monkeypatch: pytest.MonkeyPatch, amp: str, dtype, phrase: str) -> None:
    for has in (True, False):
        _host(monkeypatch, has)
        exp = tiny("supervised", train={"amp": amp})
        assert autocast_dtype(exp, CPU) is dtype and describe_amp(exp, CPU) == phrase


def test_precision_is_logged_and_recorded_and_a_changed_host_warns(
        tiny, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    exp = tiny("supervised", train={"iterations": 2, "ckpt_every": 2}, data={"num_val": 0})
    _host(monkeypatch, True)
    with caplog.at_level(logging.INFO, logger="vasseg"):
        run_dir = train_experiment(exp)
    assert "training precision: bf16 (auto: CPU has avx512_bf16)" in caplog.text
    path = latest_checkpoint(run_dir / "checkpoints")
    assert load_checkpoint(path)["precision"] == "bf16"

    caplog.clear()
    _host(monkeypatch, False)  # the same run resumed on a CPU without bf16
    with caplog.at_level(logging.WARNING, logger="vasseg"):
        train_experiment(exp, resume=True)
    assert "steps 1-2 were trained in bf16, the rest now runs in fp32" in caplog.text
    assert str(path) in caplog.text

    caplog.clear()
    _host(monkeypatch, True)  # back on a bf16 host: the checkpoint's precision again, nothing to say
    with caplog.at_level(logging.WARNING, logger="vasseg"):
        train_experiment(exp, resume=True)
    assert "were trained in" not in caplog.text


def test_old_checkpoints_without_a_precision_say_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="vasseg"):
        warn_precision_change(None, "bf16", 10, Path("ckpt.pt"))
        warn_precision_change("bf16", "bf16", 10, Path("ckpt.pt"))
    assert caplog.text == ""
