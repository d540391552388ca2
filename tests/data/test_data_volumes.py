"""Case / VolumeSet validation and the label-preserving resampling."""

import pytest
import torch
import torch.nn.functional as F

from vasseg.data.volumes import (
    Case,
    DataError,
    VolumeSet,
    rescale_case,
    resize_label,
    scaled_shape,
)


def _case(case_id="c0", shape=(8, 6, 4), label_value=1, source=""):
    image = torch.randn(1, *shape)
    label = torch.zeros(shape, dtype=torch.uint8)
    label[2:5, 1:4, 1:3] = label_value
    return Case(case_id, image, label, (1.0, 1.0, 2.0), source=source)


def test_volumeset_basics_and_to():
    vs = VolumeSet([_case("a"), _case("b")])
    assert vs.ids == ["a", "b"] and len(vs) == 2 and vs[1].id == "b"
    assert vs.to("cpu") is vs
    assert vs.device == torch.device("cpu")
    assert vs.subset(["b"]).ids == ["b"]
    assert vs.nbytes() == 2 * (8 * 6 * 4 * 4 + 8 * 6 * 4)
    assert vs.validate(2) is vs


def test_duplicate_ids_rejected():
    with pytest.raises(DataError, match="duplicate case ids: a"):
        VolumeSet([_case("a"), _case("a")])


def test_validate_names_case_and_bad_values():
    vs = VolumeSet([_case("ok"), _case("bad", label_value=3, source="/x/bad.h5")])
    with pytest.raises(DataError, match=r"^/x/bad.h5: label of case bad holds values 3 outside 0..1"):
        vs.validate(2)
    vs.validate(4)


def test_validate_rejects_nan_and_wrong_dtype():
    case = _case("n")
    case.image[0, 1, 1, 1] = float("nan")
    with pytest.raises(DataError, match="case n: image of case n holds 1 NaN/inf"):
        VolumeSet([case]).validate(2)
    case = _case("d")
    case.label = case.label.long()
    with pytest.raises(DataError, match="label must be uint8"):
        VolumeSet([case]).validate(2)


def test_resize_label_keeps_two_voxel_slab_where_nearest_loses_it():
    # A 2-voxel-thick slab at an odd offset covers half of each 2x2x2 block it touches.
    label = torch.zeros(16, 16, 16, dtype=torch.uint8)
    label[5:7] = 1
    ours = resize_label(label, (8, 8, 8), num_classes=2)
    assert ours.sum() > 0
    # Down by 3: nearest samples voxels 0, 3, 6, ... and misses a slab at [1, 3).
    label = torch.zeros(18, 18, 18, dtype=torch.uint8)
    label[1:3] = 1
    nearest = F.interpolate(label[None, None].float(), size=(6, 6, 6), mode="nearest")[0, 0]
    assert nearest.sum() == 0
    assert resize_label(label, (6, 6, 6), num_classes=2)[0].all()


def test_resize_label_multiclass_and_volume():
    label = torch.zeros(40, 40, 40, dtype=torch.uint8)
    grid = torch.stack(torch.meshgrid(*[torch.arange(40.0)] * 3, indexing="ij"))
    label[((grid - 13.3) ** 2).sum(0) < 49] = 1
    label[((grid - 27.1) ** 2).sum(0) < 36] = 2
    small = resize_label(label, (20, 20, 20), num_classes=3)
    assert small.dtype == torch.uint8 and set(small.unique().tolist()) == {0, 1, 2}
    for c in (1, 2):  # volume kept within 20 % (voxels are 8x larger)
        ratio = float((small == c).sum() * 8) / float((label == c).sum())
        assert 0.8 < ratio < 1.2


def test_rescale_case_spacing_and_native_label():
    case = _case(shape=(15, 10, 7))
    small = rescale_case(case, 0.5, num_classes=2)
    assert small.shape == scaled_shape((15, 10, 7), 0.5) == (8, 5, 4)
    assert small.image.dtype == torch.float32 and small.label.dtype == torch.uint8
    assert small.spacing == pytest.approx((15 / 8, 10 / 5, 2.0 * 7 / 4))
    assert small.native_label is case.label and small.native_shape == (15, 10, 7)
    assert small.eval_label() is case.label
    assert rescale_case(case, 1.0, 2) is case
