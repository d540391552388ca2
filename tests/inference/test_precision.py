"""Precision: bf16 detection, bf16 inference and bf16 training on the CPU."""

from __future__ import annotations

import json
import logging
import math
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from vasseg.inferer import precision
from vasseg.inferer.precision import (
    TinyFp32Conv3d,
    cpu_bf16_reason,
    cpu_flags,
    cpu_supports_bf16,
    describe_precision,
    guard_cpu_bf16_convs,
    resolve_precision,
)
from vasseg.metrics import dice

from tests.trained import phantom_h5, trained_run

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(
    not cpu_supports_bf16(),
    reason="this CPU has no bf16 instructions (no avx512_bf16/amx_bf16 flag): oneDNN would emulate bf16, "
           "slowly, and vasseg's auto never picks it here",
)

X86_BF16 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
X86_AMX = "flags\t\t: fpu avx512f amx_tile amx_bf16 amx_int8\n"
X86_PLAIN = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


@pytest.mark.parametrize("text,flag", [(X86_BF16, "avx512_bf16"), (X86_AMX, "amx_bf16"), (X86_PLAIN, None)])
def test_x86_flags_decide(tmp_path: Path, text: str, flag: str | None) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(text)
    assert ("avx512f" in cpu_flags(info)) and cpu_bf16_reason(info) == flag


def test_arm_flag_and_unreadable_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(ARM)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert cpu_bf16_reason(info) == "arm64 bf16"
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    assert cpu_bf16_reason(info) is None  # "bf16" means nothing on x86
    assert cpu_flags(tmp_path / "missing") == frozenset() and cpu_bf16_reason(tmp_path / "missing") is None


def test_this_hosts_detection_reads_proc_cpuinfo() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = cpuinfo.read_text()
    expected = any(f" {flag}" in flags for flag in ("avx512_bf16", "amx_bf16"))
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert cpu_supports_bf16() is expected


def test_resolve_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision("fp32", CPU) == torch.float32
    assert resolve_precision("bf16", CPU) == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(precision, "cpu_bf16_reason", lambda: "avx512_bf16")
    assert resolve_precision("auto", CPU) == torch.bfloat16
    assert describe_precision("auto", CPU) == "bf16 (auto: CPU has avx512_bf16)"
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(precision, "cpu_bf16_reason", lambda: None)
    assert resolve_precision("auto", CPU) == torch.float32
    assert describe_precision("auto", CPU).startswith("fp32 (auto: CPU has no bf16 instructions")
    assert describe_precision("bf16", CPU) == "bf16"
    assert resolve_precision("auto", torch.device("meta")) == torch.float32
    with pytest.raises(ValueError, match="precision 'half': choose one of auto, fp32, bf16"):
        resolve_precision("half", CPU)


def test_tiny_convolutions_leave_bf16_autocast() -> None:
    net = torch.nn.Sequential(torch.nn.Conv3d(4, 8, 3, padding=1), torch.nn.ConvTranspose3d(8, 4, 2, stride=2))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert guard_cpu_bf16_convs(net) == 1 and isinstance(net[0], TinyFp32Conv3d)
    assert net.state_dict().keys() == state.keys()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net[0](torch.randn(2, 4, 2, 2, 1)).dtype == torch.float32
        assert net[0](torch.randn(2, 4, 4, 4, 3)).dtype == torch.bfloat16
    assert net[0](torch.randn(2, 4, 2, 2, 1)).dtype == torch.float32  # no autocast: unchanged
    for _ in range(10):  # the shape whose bf16 weight gradient oneDNN gets wrong now and then
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net[0](torch.randn(4, 4, 2, 2, 1))
        out.float().sum().backward()
        assert torch.isfinite(net[0].weight.grad).all()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, phantom_root: Path) -> Path:
    return trained_run(tmp_path_factory, phantom_root)


@needs_bf16
def test_bf16_inference_matches_fp32(run: Path, phantom_root: Path) -> None:
    """bf16 against fp32 on a phantom, both window modes: probabilities within 0.05, labels Dice >= 0.98."""
    import vasseg
    from vasseg.inferer.windows import Windows

    model = vasseg.load_model(run, device="cpu", precision="fp32")
    assert model.dtype == torch.float32
    path = phantom_h5(phantom_root)
    for windows in (Windows("whole"), Windows("stride")):
        fp32 = model.predict(path, probs=True, windows=windows)
        bf16 = model.predict(path, probs=True, windows=windows, precision="bf16")
        assert bf16.dtype == np.float32 and np.isfinite(bf16).all()
        assert float(np.abs(bf16 - fp32).max()) < 0.05
        agree = dice(bf16.argmax(0) == 1, fp32.argmax(0) == 1)
        assert math.isnan(agree) or agree >= 0.98


@needs_bf16
@pytest.mark.parametrize("method", ["supervised", "mean_teacher", "vas"])
def test_bf16_training_on_cpu_stays_finite(tiny, method: str, caplog: pytest.LogCaptureFixture) -> None:
    """train.amp=bf16 on the CPU: every logged term finite, VAS's GAN and BYOL terms included."""
    from vasseg.engine.run import train_experiment

    with caplog.at_level(logging.INFO, logger="vasseg.inferer.precision"):
        run_dir = train_experiment(tiny(method, train={"amp": "bf16", "iterations": 3}, data={"num_val": 0}))
    rows = [json.loads(line) for line in (run_dir / "scalars.jsonl").read_text().splitlines() if line]
    assert [r["step"] for r in rows] == [0, 1, 2]
    terms = {k for r in rows for k in r}
    expected = {"loss", "loss_sup", "grad_norm"} | ({"loss_adv", "loss_feature", "loss_d"} if method == "vas" else set())
    assert expected <= terms
    for row in rows:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
    assert "bf16 autocast on the CPU (" in caplog.text and "emulated" not in caplog.text
