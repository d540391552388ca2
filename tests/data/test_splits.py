"""Benchmark-protocol splits and their record."""

import json

import pytest

from vasseg.data.splits import Split, SplitError, make_split, read_split, write_split

IDS = [f"id{i:02d}" for i in range(20)]


def test_protocol_first_labeled_last_val():
    s = make_split(IDS, labeled=4, num_val=3)
    assert s.labeled == IDS[:4]
    assert s.val == IDS[-3:]
    assert s.unlabeled == IDS[4:17]
    assert s.summary() == "4 labeled, 13 unlabeled, 3 val"


def test_no_validation_uses_all_rest_unlabeled():
    s = make_split(IDS, labeled=8)
    assert s.labeled == IDS[:8] and s.unlabeled == IDS[8:] and s.val == []


def test_explicit_val_ids_are_removed_from_unlabeled():
    s = make_split(IDS, labeled=2, val_ids=["id10", "id05"])
    assert s.val == ["id10", "id05"]
    assert "id10" not in s.unlabeled and "id05" not in s.unlabeled
    assert len(s.unlabeled) == 16


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"labeled": 15, "num_val": 6}, "15 labeled \\+ 6 val ids need more than the 20"),
        ({"labeled": 0}, "labeled must be >= 1"),
        ({"labeled": 2, "val_ids": ["nope"]}, "val ids not in the training list: nope"),
        ({"labeled": 4, "val_ids": ["id01"]}, "among the first 4 \\(labeled\\) ids: id01"),
        ({"labeled": 2, "val_ids": ["id09", "id09"]}, "duplicate val ids: id09"),
        ({"labeled": 2, "num_val": 3, "val_ids": ["id09"]}, "num_val=3 contradicts 1"),
    ],
)
def test_split_errors(kwargs, problem):
    with pytest.raises(SplitError, match=problem):
        make_split(IDS, **kwargs)


def test_duplicate_training_ids_rejected():
    with pytest.raises(SplitError, match="duplicate ids in the training list: id01"):
        make_split(IDS + ["id01"], labeled=2)


def test_split_itself_rejects_overlap():
    with pytest.raises(SplitError, match="ids in both labeled and val: a"):
        Split(labeled=["a"], unlabeled=["b"], val=["a"])


@pytest.mark.parametrize("name", ["split.json", "split.yaml"])
def test_round_trip(tmp_path, name):
    s = make_split(IDS, labeled=3, num_val=2)
    path = write_split(s, tmp_path / "run" / name)
    assert read_split(path) == s


def test_read_split_rejects_bad_files(tmp_path):
    bad = tmp_path / "overlap.json"
    bad.write_text(json.dumps({"labeled": ["a"], "unlabeled": ["a"], "val": []}))
    with pytest.raises(SplitError, match=f"{bad.name}: split: ids in both labeled and unlabeled"):
        read_split(bad)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"labeled": ["a"], "unlabeled": [], "test": ["b"]}))
    with pytest.raises(SplitError, match="unknown split keys: test"):
        read_split(extra)
    with pytest.raises(SplitError, match="cannot read split"):
        read_split(tmp_path / "absent.yaml")


def test_folds_cover_every_non_labeled_id_once_and_stay_disjoint():
    from vasseg.data.splits import fold_val_ids

    ids = [f"id{i:02d}" for i in range(80)]
    vals = [fold_val_ids(ids, 8, 3, k) for k in range(3)]
    assert [len(v) for v in vals] == [24, 24, 24]
    assert sorted(sum(vals, [])) == ids[8:]
    for k, val in enumerate(vals):
        s = make_split(ids, labeled=8, val_ids=val)
        assert s.labeled == ids[:8] and s.val == val
        assert sorted(s.unlabeled) == sorted(set(ids[8:]) - set(val))
    assert vals[2] == ids[-24:]  # the last fold holds the old 16-case validation split
    assert [len(fold_val_ids(IDS, 4, 3, k)) for k in range(3)] == [5, 6, 5]


@pytest.mark.parametrize("folds, fold, problem", [
    (1, 0, "need folds >= 2"), (3, 3, "fold 3 of 3"), (30, 0, "16 non-labeled ids cannot form 30 folds"),
])
def test_bad_folds(folds, fold, problem):
    from vasseg.data.splits import fold_val_ids

    with pytest.raises(SplitError, match=problem):
        fold_val_ids(IDS, 4, folds, fold)
