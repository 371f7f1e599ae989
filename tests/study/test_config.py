"""Bad configs: each is one clear error naming the field, exit 2, no Ray, no MLflow write."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from study.cli import main
from study.config import StudyConfig, apply_overrides
from study.presets import list_presets, load_study_config

BAD = [
    (["--set", "colour=blue"], "colour: unknown key"),
    (["--set", "training.wieght_decay=0.1"], "did you mean 'weight_decay'"),
    (["--set", "training.epochs=many"], "training.epochs"),
    (["--set", "space.lr.low=1.0", "--set", "space.lr.high=0.1"], "low (1.0) is greater than"),
    (["--set", "training.weight_decay=-0.001"], "training.weight_decay"),
    (["--set", "space.weight_decay.type=float", "--set", "space.weight_decay.low=-0.1"],
     "space.weight_decay: -0.1 is not allowed"),
    (["--set", "search.sampler=bayes"], "search.sampler"),
    (["--set", "dataset.name=imagenet22k"], "dataset.name: 'imagenet22k' is not a known"),
    (["--set", "backbone.name=vit_huge"], "backbone.name: 'vit_huge' is not a known"),
    (["--set", "resources.cpus_per_trial=4096"], "resources.cpus_per_trial: 4096"),
    (["--set", "resources.gpus_per_trial=1.5"], "resources.gpus_per_trial"),
    (["--set", "search.metric=fewshot/10w5s/ncc/acc"], "search.metric: no trial reports"),
    (["--set", "space.momentun.type=float"], "space.momentun"),
    (["--name", "../../etc"], "name: String should match pattern"),
    (["--set", "evaluation.shapes=[5w]"], "evaluation.shapes: '5w'"),
    (["--set", "evaluation.classifiers=[svm]"], "evaluation.classifiers: 'svm'"),
    (["--set", "search.sampler=grid"], "space.weight_decay: the grid sampler needs"),
    (["--set", "search.asha.grace_period=1", "--set", "evaluation.eval_every=2"],
     "search.asha"),
    (["--set", "dataset.name=omniglot", "--set", "dataset.root=/no/such/folder"],
     "dataset.root"),
    (["--set", "dataset.num_source_classes=100000"], "num_source_classes"),
    (["--set", "training.lr"], "--set: 'training.lr' is not key=value"),
    (["--set", "search.num_samples=0"], "search.num_samples"),
    (["--set", "training.center_loss=-0.1"], "training.center_loss"),
    (["--set", "training.feature_entropy=-1"], "training.feature_entropy"),
    (["--set", "training.etf_head=true", "--set", "backbone.width=0.125"],
     "training.etf_head: a simplex ETF of 100 source classes needs a feature width of at least 99"),
    (["--set", "space.etf_head.type=categorical", "--set", "space.etf_head.values=[false,true]",
      "--set", "backbone.width=0.125"], "space.etf_head: True is not allowed"),
]


@pytest.mark.parametrize(("args", "expected"), BAD, ids=[b[1][:30] for b in BAD])
def test_bad_config_is_one_clear_error(args, expected, tmp_path, capsys):
    root = tmp_path / "runs"
    code = main(["run", "demo", "--set", f"storage.root={root}", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err, err
    assert err.count("nctune: error:") == 1
    assert "Traceback" not in err
    assert not ray.is_initialized(), "Ray must not start for a bad config"
    assert not (root / "mlflow.db").exists(), "nothing may be written to MLflow"
    assert not root.exists(), f"a bad config left {sorted(p.name for p in root.rglob('*'))}"


EPISODE_MISFITS = [
    (["--set", "dataset.num_target_classes=3"],
     "nctune: error: invalid config: evaluation.shapes: '5w1s' draws 5 classes per episode but "
     "dataset.num_target_classes is 3; set dataset.num_target_classes to at least 5 or keep only "
     "shapes of at most 3 ways in evaluation.shapes\n"),
    (["--set", "evaluation.shapes=[3w1s,5w5s]", "--set", "dataset.num_target_classes=4"],
     "nctune: error: invalid config: evaluation.shapes: '5w5s' draws 5 classes per episode but "
     "dataset.num_target_classes is 4; set dataset.num_target_classes to at least 5 or keep only "
     "shapes of at most 4 ways in evaluation.shapes (here: 3w1s)\n"),
]


@pytest.mark.parametrize(("args", "expected"), EPISODE_MISFITS,
                         ids=["ways", "ways-some-fit"])
def test_episodes_that_do_not_fit_the_target_split_are_one_config_error(args, expected,
                                                                        tmp_path, capsys):
    """The whole message, one line naming both fields: before, the episode bank failed inside
    the run with 'n_way=5 but the labels hold only 3 classes', after the data set was built."""
    root = tmp_path / "runs"
    code = main(["run", "demo", "--set", f"storage.root={root}", *args])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err == expected
    assert "Preparing data set" not in captured.out + captured.err
    assert not ray.is_initialized()
    assert not root.exists() or not any(root.iterdir())


def test_unknown_preset_lists_the_presets(capsys):
    assert main(["run", "no-such-preset"]) == 2
    err = capsys.readouterr().err
    assert "presets: " in err and "demo" in err


def test_exit_code_from_the_console_script(tmp_path):
    """The real entry point, as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "study.cli", "run", "demo", "--set", "training.lr=-1",
         "--set", f"storage.root={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "training.lr" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_a_closed_pipe_ends_the_output_quietly():
    """`nctune presets | head -1`: no BrokenPipeError traceback, the exit status ls would give."""
    proc = subprocess.Popen([sys.executable, "-m", "study.cli", "presets"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader leaves before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_broken_pipe_elsewhere_is_not_mistaken_for_a_closed_output(monkeypatch):
    """A socket dropped under a command (say a tracking server) surfaces; only a gone reader of
    stdout ends quietly."""
    import study.commands.studies

    def drop(_args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(study.commands.studies, "cmd_presets", drop)
    with pytest.raises(BrokenPipeError):
        main(["presets"])


def test_the_cli_leaves_sigpipe_ignored_in_process():
    """Restoring SIGPIPE's default would let one write to a dropped socket (a tracking server
    restarting mid-study) kill the driver, or pytest, without a word."""
    assert main(["presets"]) == 0
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_validates(preset):
    cfg = load_study_config(preset)
    assert cfg.searched(), "a preset searches something"
    assert cfg.search.metric in cfg.metric_names()


def test_demo_preset_meets_the_issue():
    cfg = load_study_config("demo")
    assert cfg.dataset.name == "glyphs"
    assert cfg.num_samples >= 8
    assert set(cfg.searched()) == {"weight_decay", "label_smoothing", "dropout", "width",
                                   "epochs", "lr"}
    low_epochs = cfg.space["epochs"].low
    assert low_epochs is not None and low_epochs / cfg.evaluation.eval_every >= 4


def test_sweeps_are_one_factor_grids_with_seeds():
    for preset, factor in (("weight-decay-sweep", "weight_decay"),
                           ("source-classes-sweep", "num_source_classes")):
        cfg = load_study_config(preset)
        assert cfg.search.sampler == "grid"
        assert set(cfg.searched()) == {factor, "seed"}
        assert len(cfg.space["seed"].values) >= 2
        assert cfg.num_samples == len(cfg.space[factor].values) * len(cfg.space["seed"].values)


def test_overrides_reach_nested_fields_and_parse_yaml_scalars():
    cfg = load_study_config("demo", ["training.lr=0.3", "space.width.values=[1, 2]",
                                     "evaluation.shapes=[5w1s]",
                                     "search.metric=fewshot/5w1s/ncc/acc"], name="x")
    assert cfg.name == "x" and cfg.training.lr == 0.3
    assert cfg.space["width"].values == [1, 2]
    assert apply_overrides({}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_resolved_config_round_trips(tmp_path):
    from study.presets import dump_config

    cfg = load_study_config("demo")
    path = Path(tmp_path) / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_study_config(str(path)) == cfg
    assert StudyConfig.model_validate(cfg.model_dump()) == cfg


def test_collapse_control_preset_is_an_intervention_grid():
    """Issue 23: fixed lr and epochs, a grid from mitigating to inducing collapse, 3+ seeds,
    and its control losses in `nctune metrics` (the demo's list has none)."""
    cfg = load_study_config("collapse-control")
    assert cfg.search.sampler == "grid"
    assert set(cfg.searched()) == {"feature_entropy", "etf_head", "seed"}
    assert "lr" not in cfg.space and "epochs" not in cfg.space
    assert len(cfg.space["seed"].values) >= 3
    entropy = cfg.space["feature_entropy"].values
    assert max(entropy) > 0 and 0.0 in entropy
    assert cfg.space["etf_head"].values == [False, True]
    assert "source/entropy_loss" in cfg.metric_names()
    assert "source/center_loss" not in cfg.metric_names()
    assert "source/center_loss" in load_study_config(
        "collapse-control", ["space.center_loss.type=categorical",
                             "space.center_loss.values=[0.0,0.01]"]).metric_names()
    assert not {"source/center_loss", "source/entropy_loss"} & load_study_config(
        "demo").metric_names()


def test_regularisers_preset_holds_lr_and_epochs_fixed():
    """The preset that lets the partial correlation be estimated: only the regularisers and
    width move, so source accuracy does not decide transfer alone (README, issue 20 item 8)."""
    cfg = load_study_config("regularisers")
    assert set(cfg.searched()) == {"weight_decay", "label_smoothing", "dropout", "width"}
    assert cfg.training.lr == load_study_config("demo").training.lr
    assert cfg.dataset == load_study_config("demo").dataset
