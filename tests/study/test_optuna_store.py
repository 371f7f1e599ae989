"""The study's Optuna storage before any trial: where it is, and every way it can be wrong.

Real Optuna RDB storages (sqlite files); the CLI tests run `nctune run` up to its pre-flight,
which must stop with one line, credentials masked, exit 2, nothing written.
"""

from __future__ import annotations

import optuna
import pytest

from analysis.errors import InputError
from study.cli import main
from study.run.optuna_store import check_existing, describe_difference, open_storage, storage_url
from study.space import optuna_space
from tests.study.studies import tiny_study


def test_the_default_storage_sits_beside_the_mlflow_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_study(tmp_path)
    assert storage_url(cfg) == f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = tiny_study(tmp_path, tracking={"uri": f"sqlite:///{tmp_path / 'elsewhere' / 'm.db'}"})
    assert storage_url(cfg) == f"sqlite:///{tmp_path / 'elsewhere' / 'optuna.db'}"
    cfg = tiny_study(tmp_path, tracking={"uri": "http://127.0.0.1:5000"})
    assert storage_url(cfg) == f"sqlite:///{tmp_path / 'optuna.db'}"  # a server: under root
    cfg = tiny_study(tmp_path, search={"storage": "postgresql://u:p@db.lab:5432/optuna"})
    assert storage_url(cfg) == "postgresql+psycopg://u:p@db.lab:5432/optuna"  # psycopg 3


def a_study_with(storage: optuna.storages.BaseStorage, name: str, space: dict,
                 direction: str = "maximize") -> None:
    study = optuna.create_study(storage=storage, study_name=name, direction=direction)
    study.add_trial(optuna.trial.create_trial(
        params={k: d.to_external_repr(d.low if hasattr(d, "low") else 0)
                for k, d in space.items()},
        distributions=space, value=0.5))


def test_an_existing_study_of_that_name_must_have_the_same_space(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_storage(url)
    ours = optuna_space(tiny_study(tmp_path).space)
    check_existing(storage, "new", ours, ["max"], url)  # no such study: fine
    a_study_with(storage, "same", ours)
    check_existing(storage, "same", ours, ["max"], url)  # same space and goal: it continues
    theirs = {**ours, "dropout": optuna.distributions.FloatDistribution(0.0, 0.5)}
    theirs["weight_decay"] = optuna.distributions.FloatDistribution(1e-6, 1e-1, log=True)
    a_study_with(storage, "other", theirs)
    with pytest.raises(InputError) as err:
        check_existing(storage, "other", ours, ["max"], url)
    text = str(err.value)
    assert text.startswith("space: the Optuna study 'other' in sqlite:///")
    assert "dropout only there" in text and "weight_decay: FloatDistribution" in text
    assert "label_smoothing" not in text  # what is the same is not listed
    with pytest.raises(InputError, match=r"search\.mode: .* maximizes; this study would minimize"):
        check_existing(storage, "same", ours, ["min"], url)


def test_describe_difference_names_each_key_once():
    a = optuna.distributions.IntDistribution(1, 4)
    b = optuna.distributions.IntDistribution(1, 8)
    assert describe_difference({"x": a, "y": a}, {"x": b, "z": a}) == (
        f"x: {a!r} there, {b!r} here; y only there; z only here")
    assert describe_difference({}, {"x": a}) == ""  # an empty study constrains nothing


@pytest.mark.timeout(60)
def test_an_unreachable_storage_is_one_masked_line_before_anything_starts(tmp_path, capsys):
    url = "postgresql://alice:s3cret@127.0.0.1:9/optuna"
    code = main(["run", "demo", "--set", f"storage.root={tmp_path}",
                 "--set", f"search.storage={url}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("nctune: error: search.storage: the Optuna storage "
                          "'postgresql+psycopg://***@127.0.0.1:9/optuna' cannot be opened")
    assert len(err.strip().splitlines()) == 1 and "s3cret" not in err and "alice" not in err
    assert not (tmp_path / "studies").exists() and not (tmp_path / "ray").exists()


def test_a_clashing_optuna_study_stops_the_run_before_anything_starts(tmp_path, capsys):
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    a_study_with(storage, "demo", {"lr": optuna.distributions.FloatDistribution(0.01, 0.1)})
    code = main(["run", "demo", "--set", f"storage.root={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "with a different search space" in err and "lr: FloatDistribution" in err
    assert not (tmp_path / "studies").exists() and not (tmp_path / "ray").exists()


@pytest.mark.parametrize(("point", "expected"), [
    ("{weight_decay: 0.5, label_smoothing: 0.1}",
     "search.points_to_evaluate[0].weight_decay: 0.5 is outside the space (1e-05 to 0.01, "
     "log scale)"),
    ("{weight_decay: 0.001}", "missing: label_smoothing"),
    ("{weight_decay: 0.001, label_smoothing: 0.1, lr: 0.1}", "not searched: lr"),
])
def test_warm_start_points_are_checked_against_the_space(point, expected, tmp_path, capsys):
    cfg = tiny_study(tmp_path)
    path = tmp_path / "s.yaml"
    from study.presets import dump_config

    path.write_text(dump_config(cfg))
    code = main(["run", str(path), "--set", f"search.points_to_evaluate=[{point}]"])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert not (tmp_path / "studies").exists()
