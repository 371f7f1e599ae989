"""`nctune datasets list` and `nctune datasets show`, through the real CLI entry point."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest

from study.cli import main
from trainables.data import list_datasets
from trainables.data.glyph_fonts import glyph_classes


def test_list_names_every_data_set_with_class_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    for name in list_datasets():
        assert name in out
    assert f"{len(glyph_classes())} (" in out and "1623" in out


def test_show_writes_a_grid_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "grid.png"
    rc = main(["datasets", "show", "digits", "--out", str(out), "--classes", "4",
               "--per-class", "6", "--set", "num_source_classes=5",
               "--set", "dataset.num_target_classes=5", "--split", "target"])
    assert rc == 0, capsys.readouterr().err
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert str(out) in capsys.readouterr().out


def test_show_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "show", "mnist", "--out", str(tmp_path / "x.png")]) == 2
    assert "dataset.name: unknown data set 'mnist'; known: cifar-fs" in capsys.readouterr().err
    assert main(["datasets", "show", "digits", "--set", "colour=red"]) == 2
    assert "--set: 'colour=red' is not KEY=VALUE with a dataset option" in \
        capsys.readouterr().err
    assert main(["datasets", "show", "digits", "--set", "image_size=4"]) == 2
    assert "image_size" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
