"""Lossless LA packing: round trip, chunk limits, corruption and non-8-bit images are refused."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from vasseg.data.la import TRAIN_DIR, read_h5_case
from vasseg.data.pack import main, pack_la, unpack_la
from vasseg.data.volumes import DataError


def _write_la(root: Path, n: int, levels: int = 200, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    ids = [f"CASE{i:02d}" for i in range(n)]
    for case_id in ids:
        raw = rng.integers(0, levels, size=(20, 18, 12)).astype(np.float64)
        image = ((raw - raw.mean()) / raw.std()).astype(np.float32)  # z-scored 8-bit, like LA
        label = (rng.random((20, 18, 12)) > 0.8).astype(np.uint8)
        (root / TRAIN_DIR / case_id).mkdir(parents=True)
        with h5py.File(root / TRAIN_DIR / case_id / "mri_norm2.h5", "w") as h:
            h["image"], h["label"] = image, label
    (root / "train.list").write_text("\n".join(ids) + "\n")
    (root / "test.list").write_text("MISSING01\n")
    return ids


def test_round_trip_is_bit_exact_across_several_chunks(tmp_path: Path) -> None:
    ids = _write_la(tmp_path / "la", 5)
    chunks = pack_la(tmp_path / "la", tmp_path / "packed", chunk_mib=0.01)
    assert len(chunks) >= 3 and all(c.stat().st_size <= 0.01 * 2**20 + 4096 for c in chunks)
    done = unpack_la(tmp_path / "packed", tmp_path / "out")
    assert sorted(done) == ids
    for case_id in ids:
        a = read_h5_case(tmp_path / "la" / TRAIN_DIR / case_id / "mri_norm2.h5")
        b = read_h5_case(tmp_path / "out" / TRAIN_DIR / case_id / "mri_norm2.h5")
        assert a[0].dtype == b[0].dtype == np.float32
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert (tmp_path / "out" / "test.list").read_text() == "MISSING01\n"


def test_partial_unpack_uses_the_chunks_present(tmp_path: Path) -> None:
    _write_la(tmp_path / "la", 4)
    chunks = pack_la(tmp_path / "la", tmp_path / "packed", chunk_mib=0.01)
    chunks[-1].unlink()
    assert 0 < len(unpack_la(tmp_path / "packed", tmp_path / "out")) < 4


def test_more_than_256_intensities_are_refused(tmp_path: Path) -> None:
    _write_la(tmp_path / "la", 1, levels=4000)
    with pytest.raises(DataError, match="distinct intensities"):
        pack_la(tmp_path / "la", tmp_path / "packed")
    assert not (tmp_path / "packed").exists()


def test_corrupt_chunk_is_a_one_line_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_la(tmp_path / "la", 2)
    (chunk,) = pack_la(tmp_path / "la", tmp_path / "packed")
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])
    capsys.readouterr()
    assert main(["unpack", str(tmp_path / "packed"), str(tmp_path / "out")]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and "chunk_000.zip: unreadable chunk" in errors[0]
    assert "Traceback" not in errors[0]


def test_a_test_split_pack_unpacks_beside_the_train_pack(tmp_path: Path) -> None:
    ids = _write_la(tmp_path / "la", 5)
    (tmp_path / "la" / "train.list").write_text("\n".join(ids[:3]) + "\n")
    (tmp_path / "la" / "test.list").write_text("\n".join(ids[3:]) + "\n")
    pack_la(tmp_path / "la", tmp_path / "train_pack")
    assert main(["pack", str(tmp_path / "la"), str(tmp_path / "test_pack"), "--list", "test.list"]) == 0
    assert sorted(unpack_la(tmp_path / "train_pack", tmp_path / "out")) == ids[:3]
    assert sorted(unpack_la(tmp_path / "test_pack", tmp_path / "out")) == ids[3:]
    assert sorted(p.name for p in (tmp_path / "out" / TRAIN_DIR).iterdir()) == ids
    assert (tmp_path / "out" / "test.list").read_text().split() == ids[3:]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "test.list").write_text("SOMEONE_ELSE\n")
    with pytest.raises(DataError, match="other/test.list: exists with other ids"):
        unpack_la(tmp_path / "test_pack", tmp_path / "other")
    assert not (tmp_path / "other" / TRAIN_DIR).exists()


def test_unpacking_again_skips_the_chunks_already_there(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ids = _write_la(tmp_path / "la", 4)
    pack_la(tmp_path / "la", tmp_path / "packed", chunk_mib=0.01, first=1, last=1)
    assert sorted(unpack_la(tmp_path / "packed", tmp_path / "out", workers=2)) == ids
    target = tmp_path / "out" / TRAIN_DIR / ids[0] / "mri_norm2.h5"
    stamp = target.stat().st_mtime_ns
    assert sorted(unpack_la(tmp_path / "packed", tmp_path / "out")) == ids
    assert target.stat().st_mtime_ns == stamp  # not decoded again
    target.unlink()  # a case gone: its chunk is decoded again
    assert sorted(unpack_la(tmp_path / "packed", tmp_path / "out")) == ids and target.is_file()


def test_labeled_and_validation_cases_come_first() -> None:
    from vasseg.data.pack import priority_order

    ids = [f"c{i}" for i in range(8)]
    assert priority_order(ids, 2, 3) == ["c0", "c1", "c5", "c6", "c7", "c2", "c3", "c4"]
    assert priority_order(ids) == ids and priority_order(ids[:3], 2, 2) == ["c0", "c1", "c2"]


def test_the_predictor_is_exact_at_the_volume_borders_and_on_odd_shapes() -> None:
    from vasseg.data.pack_codec import decode_case, encode_case

    rng = np.random.default_rng(3)
    for shape in [(1, 1, 1), (3, 1, 5), (7, 9, 2), (17, 11, 13)]:
        levels = np.cumsum(rng.integers(0, 3, size=shape), axis=0) % 256  # smooth and wrapping
        image = ((levels - levels.mean()) / (levels.std() + 1)).astype(np.float32)
        label = (levels > levels.mean()).astype(np.uint8)
        back = decode_case(encode_case(image, label, "x"), "x")
        assert np.array_equal(back[0], image) and np.array_equal(back[1], label)


@pytest.mark.realdata
def test_the_real_la_cases_round_trip_bit_exactly() -> None:
    """Every LA training case through the codec: identical float32 image and uint8 label."""
    from vasseg.data.la import case_path, read_id_list
    from vasseg.data.pack_codec import decode_case, encode_case

    root = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "LA"
    if not (root / "train.list").is_file():
        pytest.skip(f"{root}: no LA data")
    total = 0
    for case_id in read_id_list(root / "train.list"):
        image, label = read_h5_case(case_path(root, case_id))
        members = encode_case(image, label, case_id)
        total += sum(len(v) for v in members.values())
        back = decode_case(members, case_id)
        assert back[0].dtype == np.float32 and np.array_equal(back[0], image) and np.array_equal(back[1], label)
    assert total / 2**20 < 80  # 104 MiB with the indices alone (issue 30)
