"""Tests for ``usam train``'s arguments: the output path is checked before the store is read; every option has help."""

from __future__ import annotations

import os

import pytest

from usam.cli import build_parser, main


def one_error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("usam: error: ")
    return lines[0]


def test_bad_output_paths_are_one_line_errors_before_the_store_is_read(tmp_path, capsys, monkeypatch):
    missing_store = tmp_path / "no-store"  # never read: the output path fails first
    base = ["train", "--data", str(missing_store), "--no-progress", "--device", "cpu"]

    assert main([*base, "--out", str(tmp_path)]) == 2
    assert "is a folder" in one_error_line(capsys)

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main([*base, "--out", str(a_file / "heads.safetensors")]) == 2
    assert "is a file, not a folder" in one_error_line(capsys)

    assert main([*base, "--out", str(missing_store / "heads.safetensors")]) == 2
    assert "into the input" in one_error_line(capsys)

    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: False if str(path) == str(tmp_path) else real_access(path, mode)
    )
    assert main([*base, "--out", str(tmp_path / "heads.safetensors")]) == 2
    assert "not writable" in one_error_line(capsys)
    assert not list(tmp_path.glob("*.safetensors"))


@pytest.mark.parametrize("option", ["--preset", "--tie-rule", "--pool-sizes", "--no-pool-sizes", "--dataset-defaults"])
def test_train_help_lists_the_new_options(option, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert option in capsys.readouterr().out
