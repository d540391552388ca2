"""Issue 25 item 1: a command that writes a folder replaces only what it wrote itself.

``evaluate --out DIR`` emptied DIR (a user's files, a run folder with its checkpoints) and exited
0. Every folder-writing command now refuses a folder holding anything it did not write unless
``--overwrite``, and even then the other files survive (report, predict and prepare: in their own
test files; the shared mechanism is :mod:`vasseg.outfolder`).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from vasseg.cli import main
from vasseg.config import ConfigError
from vasseg.outfolder import MARKER, Owner, check_folder, install, published_folder

from tests.clitools import cli_error

EVAL = ("--split", "test", "--device", "cpu", "--quiet")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_evaluate_out_keeps_a_foreign_file(run_copy: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    line = cli_error(capsys, "evaluate", str(run_copy), "--out", str(out), *EVAL)
    assert line == (f"vasseg evaluate: error: {out}: holds 'notes.txt', not written by vasseg evaluate; give a new "
                    f"or empty folder, or pass --overwrite to write beside them (only vasseg evaluate's own files "
                    f"are ever replaced)")
    assert _files(out) == {"notes.txt": b"keep me"}
    for _ in range(2):  # the second run replaces the first one's results, never the note
        assert main(["evaluate", str(run_copy), "--out", str(out), "--overwrite", *EVAL]) == 0
        assert (out / "notes.txt").read_text() == "keep me"
        assert {"cases.csv", "summary.json", "summary.md", MARKER} <= set(os.listdir(out))
    marker = json.loads((out / MARKER).read_text())
    assert marker["command"] == "evaluate" and "notes.txt" not in marker["files"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_evaluate_out_on_a_run_folder_keeps_its_checkpoints(run_copy: Path, capsys) -> None:
    before = _files(run_copy)
    line = cli_error(capsys, "evaluate", str(run_copy), "--out", str(run_copy), *EVAL)
    assert f"{run_copy}: holds 'checkpoints' and " in line and "not written by vasseg evaluate" in line
    assert _files(run_copy) == before
    assert main(["evaluate", str(run_copy), "--out", str(run_copy), "--overwrite", *EVAL]) == 0
    capsys.readouterr()
    after = _files(run_copy)
    assert {k: after[k] for k in before} == before  # checkpoints, config, split, logs: all intact
    assert {"cases.csv", "summary.md"} <= set(after)


def test_evaluate_replaces_its_own_earlier_output_without_overwrite(run_copy: Path, capsys) -> None:
    out = run_copy / "eval" / "test_last"
    assert main(["evaluate", str(run_copy), "--out", str(out), *EVAL]) == 0
    (out / MARKER).unlink()  # as written before the marker existed: recognised by its file names
    assert main(["evaluate", str(run_copy), "--out", str(out), *EVAL]) == 0
    assert (out / MARKER).is_file()
    (out / "cases.csv").write_text("mine")
    (out / MARKER).unlink()
    (out / "x.txt").write_text("")  # no marker and a foreign file: cases.csv may be the user's
    capsys.readouterr()
    line = cli_error(capsys, "evaluate", str(run_copy), "--out", str(out), "--overwrite", *EVAL)
    assert line.endswith(f"{out / 'cases.csv'}: has the name of an output of vasseg evaluate but was not written "
                         f"by it; not replaced, even with --overwrite (move it away first)")


def test_an_output_path_that_is_a_file_is_refused(run_copy: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "f.txt").write_text("x")
    line = cli_error(capsys, "evaluate", str(run_copy), "--out", str(tmp_path / "f.txt"), *EVAL)
    assert line.endswith(f"{tmp_path / 'f.txt'}: cannot create the output folder ({tmp_path / 'f.txt'} is not a folder)")


OWNER = Owner("tool", ("a.txt", "b"))


def test_install_undoes_every_rename_when_one_fails(tmp_path: Path, monkeypatch) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "mine.txt").write_text("keep")
    (final / "a.txt").write_text("old a")
    (final / MARKER).write_text(json.dumps({"command": "tool", "files": ["a.txt"]}))
    new = tmp_path / "new"
    (new / "b").mkdir(parents=True)
    (new / "a.txt").write_text("new a")
    real = os.replace

    def failing(src, dst):  # noqa: ANN001 - the rename of b fails (e.g. a full disk's metadata)
        if Path(src).name == "b":
            raise OSError(errno.EIO, "I/O error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        install(new, final, OWNER)
    assert _files(final) == {"mine.txt": b"keep", "a.txt": b"old a", MARKER: (final / MARKER).read_bytes()}
    monkeypatch.setattr(os, "replace", real)
    install(new, final, OWNER)
    assert (final / "a.txt").read_text() == "new a" and (final / "b").is_dir() and (final / "mine.txt").exists()


def test_published_folder_swaps_whole_when_nothing_foreign_is_there(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with published_folder(final, OWNER, "the output") as tmp:
        (tmp / "a.txt").write_text("1")
    check_folder(final, OWNER, overwrite=False)  # its own output: no --overwrite needed
    with pytest.raises(ValueError):
        with published_folder(final, OWNER, "the output") as tmp:
            (tmp / "a.txt").write_text("2")
            raise ValueError("boom")
    assert (final / "a.txt").read_text() == "1"
    other = Owner("other", ("a.txt",))
    with pytest.raises(ConfigError, match="not written by vasseg other"):
        check_folder(final, other, overwrite=False)
