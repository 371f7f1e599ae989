"""What each metric family *is*: one descriptor per family, the data behind the metric contract.

`analysis.contract` builds every name a trial logs and answers questions about a name; this module
says what each family means: its name pattern and splits, which way is better for transfer, its
label in words, whether it is read on a log scale, and the paper it comes from. The contract's
collapse families and estimators are read from here, and everything that needs to know "is lower
better", "how do I say this in a sentence" or "log axis?" asks the contract, which asks here: the
leaderboard's orientation, the effects' log targets, every figure and report label, and
`nctune metrics --describe`. Adding a statistic means one `register(Descriptor(...))` below (see
the README, "Adding a statistic").

Plain Python (no torch, no other nctune import): the base every other module may import.
"""

from __future__ import annotations

from dataclasses import dataclass

# The splits every evaluation measures (features of one forward pass each).
SOURCE_TRAIN, SOURCE_TEST, TARGET = "source_train", "source_test", "target"
SPLITS = (SOURCE_TRAIN, SOURCE_TEST, TARGET)
LAYER_PREFIX = "layer"
TRANSFER_PREFIX = "transfer"
PROBE_PREFIX = "probe"
BOUND_CANTELLI_PREFIX = "bound_cantelli"
# NC3 needs the classifier (source classes only); NC4 compares the head with NCC on source_test.
NC3_SOURCE = "nc3/source"
NC4_SOURCE_TEST = "nc4/source_test"
# Pretraining progress and cost, reported every epoch.
TRAIN_LOSS = "source/train_loss"
TRAIN_ACC = "source/train_acc"
SOURCE_TEST_ACC = "source/test_acc"
TRAIN_TIME = "time/train_s"
EVAL_TIME = "time/eval_s"
THROUGHPUT = "throughput/train_img_s"
# Collapse controls' per-epoch terms (trainables.collapse_controls), logged only when on.
CENTER_LOSS = "source/center_loss"
ENTROPY_LOSS = "source/entropy_loss"

@dataclass(frozen=True)
class Descriptor:
    """One metric family.

    Attributes:
        family: the registry key: a name's first part (`cdnv`), or the whole two-part name for
            training metrics (`source/test_acc`), or `transfer/<estimator>`.
        pattern: how its names look, e.g. `cdnv/<split>`.
        group: the `nctune metrics` group it is listed under.
        label: the family in words ("CDNV").
        direction: +1 when a higher value should go with better transfer (or progress), -1 when
            lower should, 0 when neither is meant (times, interval widths).
        log_scale: spans orders of magnitude: plotted and fitted on a log scale.
        citation: the paper that defines it, or "" for plain bookkeeping.
        splits: the splits it is measured on, where it has any.
        collapse: a collapse statistic (what the study's question is about).
    """

    family: str
    pattern: str
    group: str
    label: str
    direction: int
    log_scale: bool = False
    citation: str = ""
    splits: tuple[str, ...] = ()
    collapse: bool = False


REGISTRY: dict[str, Descriptor] = {}


def register(d: Descriptor) -> Descriptor:
    """Add one family's descriptor (once; a second registration is a programming error)."""
    if d.family in REGISTRY:
        raise ValueError(f"metric family {d.family!r} is registered twice")
    REGISTRY[d.family] = d
    return d


_GALANTI = "Galanti, György & Hutter, ICLR 2022 (arXiv 2112.15121)"
_PAPYAN = "Papyan, Han & Donoho, PNAS 2020"
for _fam, _label, _cite in (
        ("cdnv", "CDNV", _GALANTI + ", Def. 1 (biased variances)"),
        ("cdnv_dir", "directional CDNV", _GALANTI + " (variance along the mean difference)"),
        ("cdnv_unbiased", "CDNV (unbiased)", _GALANTI + ", with 1/(N_c - 1) variances"),
        ("nc1", "NC1", _PAPYAN + ": Tr(S_W S_B^+)/C")):
    register(Descriptor(_fam, f"{_fam}/<split>", "collapse", _label, -1, log_scale=True,
                        citation=_cite, splits=SPLITS, collapse=True))
for _fam, _label in (("nc2_equinorm", "NC2 equinorm"), ("nc2_equiangle", "NC2 equiangularity")):
    register(Descriptor(_fam, f"{_fam}/<split>", "collapse", _label, -1, citation=_PAPYAN,
                        splits=SPLITS, collapse=True))
register(Descriptor("nc3", NC3_SOURCE, "source", "NC3 (self-duality)", -1,
                    citation=_PAPYAN, collapse=True))
register(Descriptor("nc4", NC4_SOURCE_TEST, "source", "NC4 (head vs NCC disagreement)", -1,
                    citation=_PAPYAN, collapse=True))
register(Descriptor("erank", "layer/<tap>/erank/<split>", "layers", "effective rank", +1,
                    citation="Garrido et al., ICML 2023 (RankMe)", splits=SPLITS))
register(Descriptor("fewshot", "fewshot/<n>w<k>s/<classifier>/<acc|ci95>", "fewshot",
                    "few-shot accuracy", +1, citation="Galanti et al. 2022; Tian et al., "
                    "ECCV 2020 (RFS) for the logreg probe"))
register(Descriptor("bound", "bound/<n>w<k>s", "bound", "CDNV bound on the NCC error", 0,
                    log_scale=True, citation="nctune's own derivation (analysis.measure.bound)"))
register(Descriptor(BOUND_CANTELLI_PREFIX, "bound_cantelli/<n>w<k>s", "bound",
                    "Cantelli bound on the NCC error", 0, log_scale=True,
                    citation="Cantelli's inequality (analysis.measure.bound)"))
register(Descriptor(LAYER_PREFIX, "layer/<tap>/<metric>/<split>", "layers",
                    "per-layer statistic", 0))
for _key, _label, _dir in ((TRAIN_LOSS, "training loss", -1),
                           (TRAIN_ACC, "training accuracy", +1),
                           (SOURCE_TEST_ACC, "source test accuracy", +1),
                           (TRAIN_TIME, "training time per epoch (s)", 0),
                           (EVAL_TIME, "evaluation time per epoch (s)", 0),
                           (THROUGHPUT, "training throughput (images/s)", 0)):
    register(Descriptor(_key, _key, "source" if _key == SOURCE_TEST_ACC else "training",
                        _label, _dir))

register(Descriptor(CENTER_LOSS, CENTER_LOSS, "training", "centre loss", -1,
                    citation="Wen et al., ECCV 2016 (induces collapse)"))
register(Descriptor(ENTROPY_LOSS, ENTROPY_LOSS, "training", "feature-entropy (KoLeo) loss", -1,
                    citation="Sablayrolles et al., ICLR 2019; Harun et al., ICML 2025 "
                    "(mitigates collapse)"))

# Transferability estimators: higher = more transferable, except NCTI's within-class spread.
_ESTIMATORS = {
    "logme": ("LogME", +1, "You et al., ICML 2021"),
    "hscore": ("H-score (shrinkage)", +1, "Bao et al., ICIP 2019; Ibrahim et al., ICLR 2023"),
    "leep": ("LEEP", +1, "Nguyen et al., ICML 2020"),
    "nce": ("NCE", +1, "Tran et al., ICCV 2019"),
    "gbc": ("GBC", +1, "Pándy et al., CVPR 2022"),
    "sfda": ("SFDA", +1, "Shao et al., ECCV 2022"),
    "ncti_seli": ("NCTI S_seli", +1, "Wang et al., ICCV 2023"),
    "ncti_ncc": ("NCTI S_ncc", +1, "Wang et al., ICCV 2023"),
    "ncti_vc": ("NCTI S_vc", -1, "Wang et al., ICCV 2023"),
    "knn": ("k-NN leave-one-out accuracy", +1, "Cover & Hart 1967 (cosine 5-NN)"),
}
for _est, (_label, _dir, _cite) in _ESTIMATORS.items():
    register(Descriptor(f"{TRANSFER_PREFIX}/{_est}", f"{TRANSFER_PREFIX}/{_est}/{TARGET}",
                        "transfer",
                        _label, _dir, citation=_cite, splits=(TARGET,)))

CLASSIFIER_LABELS = {"ncc": "NCC", "ncc_l2": "NCC (L2)", "ncc_raw": "NCC (raw)",
                     "logreg": "log. regression"}


def families(group: str) -> tuple[str, ...]:
    """Registered families of one `nctune metrics` group, in registration order."""
    return tuple(d.family for d in REGISTRY.values() if d.group == group)
