"""The metric contract: every metric name nctune logs, and the one function that lists them.

Trials report these names (`trainables.evaluate`, `trainables.pretrain`), the driver logs them
to MLflow (`study.run.tracking`), the config checks `search.metric` against them (`study.config`),
and the study analysis reads them (`analysis.crosstrial`). A name is built here or nowhere:

    collapse_key("cdnv", "target")          -> "cdnv/target"
    fewshot_key("5w5s", "ncc")              -> "fewshot/5w5s/ncc/acc"
    bound_key("5w5s")                       -> "bound/5w5s"
    bound_cantelli_key("5w5s")              -> "bound_cantelli/5w5s"
    layer_key("layer2", "cdnv", "target")   -> "layer/layer2/cdnv/target"
    layer_fewshot_key("layer2", "5w5s")     -> "layer/layer2/fewshot/5w5s/ncc/acc"
    transfer_key("logme")                   -> "transfer/logme/target"
    probe_key("digits", "cdnv/target")      -> "probe/digits/cdnv/target"

`trial_metrics(spec)` answers "which names does a trial of this evaluation report", grouped as
`nctune metrics` prints them. This module is plain Python (no torch), so the CLI and the
study-level analysis can import it cheaply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from analysis.descriptors import (  # noqa: F401  (re-exported: the contract's vocabulary)
    BOUND_CANTELLI_PREFIX,
    CENTER_LOSS,
    CLASSIFIER_LABELS,
    ENTROPY_LOSS,
    EVAL_TIME,
    LAYER_PREFIX,
    NC3_SOURCE,
    NC4_SOURCE_TEST,
    PROBE_PREFIX,
    REGISTRY,
    SOURCE_TEST,
    SOURCE_TEST_ACC,
    SOURCE_TRAIN,
    SPLITS,
    TARGET,
    THROUGHPUT,
    TRAIN_ACC,
    TRAIN_LOSS,
    TRAIN_TIME,
    TRANSFER_PREFIX,
    Descriptor,
    families,
)
from analysis.errors import InputError

# ---- splits and families (what each family is: analysis.descriptors) ---------------------------

# Collapse statistics measured on every split at the penultimate layer (analysis.measure.collapse):
# every family registered in the "collapse" group.
COLLAPSE_FAMILIES = families("collapse")
TRAINING_METRICS = (TRAIN_LOSS, TRAIN_ACC, TRAIN_TIME, THROUGHPUT)
# Collapse controls' terms (trainables.collapse_controls), per epoch, only when that control is on.
CONTROL_LOSSES = (CENTER_LOSS, ENTROPY_LOSS)

FEWSHOT_STATS = ("acc", "ci95")
# The few-shot classifier every layer tap and bound refers to: NCC on centred-then-L2 features.
PRIMARY_CLASSIFIER = "ncc"
DEFAULT_SEARCH_METRIC = "fewshot/5w5s/ncc/acc"

# Per-tap statistics (issue "Where in the network"): on source_train and target, optionally
# source_test.
LAYER_FAMILIES = ("cdnv", "cdnv_unbiased", "nc1", "erank")

# Transferability estimators on the target features (analysis.measure.transfer), logged as
# transfer/<name>/target: every family registered in the "transfer" group. NCTI is logged as its
# three per-model parts; the pooled NCTI is formed across trials by the study analysis.
ESTIMATORS = tuple(f.split("/", 1)[1] for f in families("transfer"))
# Parent-run metrics written by the study analysis (analysis.crosstrial.report).
ANALYSIS_PREFIX = "analysis"

_SHAPE_RE = re.compile(r"^(\d+)w(\d+)s$")
_NAME_PART = re.compile(r"^[A-Za-z0-9_.+-]+$")


# ---- episode shapes --------------------------------------------------------------------------
def format_shape(n_way: int, k_shot: int) -> str:
    """(5, 1) -> "5w1s", the form used in metric names such as fewshot/5w1s/ncc/acc."""
    return f"{n_way}w{k_shot}s"


def parse_shape(shape: str) -> tuple[int, int]:
    """Parse "5w1s" into (n_way, k_shot) = (5, 1): the one parser of episode shapes.

    Raises:
        InputError: `shape` is not "<n>w<k>s" with n >= 2 ways and k >= 1 shots.
    """
    match = _SHAPE_RE.match(shape.strip()) if isinstance(shape, str) else None
    n_way, k_shot = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if match is None or n_way < 2 or k_shot < 1:
        raise InputError(f"'{shape}' is not an episode shape; write <n>w<k>s with n >= 2 ways "
                         "and k >= 1 shots, e.g. 5w1s or 5w5s")
    return n_way, k_shot


def is_shape(text: str) -> bool:
    """Whether `text` parses as an episode shape."""
    try:
        parse_shape(text)
    except InputError:
        return False
    return True


def sort_shapes(shapes: Iterable[str]) -> list[str]:
    """Shapes in (n_way, k_shot) order, duplicates dropped."""
    return sorted(set(shapes), key=parse_shape)


# ---- name builders ---------------------------------------------------------------------------
def collapse_key(family: str, split: str) -> str:
    """`cdnv/target`: a collapse statistic of the penultimate features of one split."""
    return f"{family}/{split}"


def fewshot_key(shape: str, classifier: str, stat: str = "acc") -> str:
    """`fewshot/5w5s/ncc/acc` (or `.../ci95`): few-shot accuracy on the target episodes."""
    return f"fewshot/{shape}/{classifier}/{stat}"


def bound_key(shape: str) -> str:
    """`bound/5w5s`: the CDNV bound on the NCC error (analysis.measure.bound)."""
    return f"bound/{shape}"


def bound_cantelli_key(shape: str) -> str:
    """`bound_cantelli/5w5s`: the Cantelli bound on the NCC error (analysis.measure.bound)."""
    return f"{BOUND_CANTELLI_PREFIX}/{shape}"


def layer_key(tap: str, family: str, split: str) -> str:
    """`layer/<tap>/<metric>/<split>`: a collapse statistic at one tap of the backbone."""
    return f"{LAYER_PREFIX}/{tap}/{family}/{split}"


def layer_fewshot_key(tap: str, shape: str) -> str:
    """`layer/<tap>/fewshot/<shape>/ncc/acc`: NCC accuracy of one tap's features."""
    return f"{LAYER_PREFIX}/{tap}/fewshot/{shape}/{PRIMARY_CLASSIFIER}/acc"


def transfer_key(estimator: str) -> str:
    """`transfer/<estimator>/target`: a transferability estimator on the target features."""
    return f"{TRANSFER_PREFIX}/{estimator}/{TARGET}"


def probe_key(name: str, metric: str) -> str:
    """`probe/<name>/<metric>`: a contract metric measured later on another target."""
    return f"{PROBE_PREFIX}/{name}/{metric}"


def analysis_key(*parts: str) -> str:
    """`analysis/<part>/...`: a parent-run metric of the study analysis."""
    return "/".join((ANALYSIS_PREFIX, *parts))


def check_name_part(what: str, value: str) -> str:
    """A tap, estimator or probe name must not break a metric name (no '/', no spaces)."""
    if not isinstance(value, str) or not _NAME_PART.match(value):
        raise InputError(f"{what}: {value!r} cannot be part of a metric name; use letters, "
                         "digits, '_', '.', '+' or '-'")
    return value


# ---- what a trial reports --------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSpec:
    """What an evaluation measures, as far as metric names are concerned.

    Attributes:
        shapes: episode shapes ("5w1s", ...).
        classifiers: few-shot classifiers, by registered name.
        taps: backbone taps measured per layer (empty: penultimate only).
        layer_splits: the splits the per-tap collapse statistics are measured on.
        estimators: transferability estimators logged as transfer/<name>/target.
        control_losses: the collapse controls' per-epoch terms this trial logs (CONTROL_LOSSES).
    """

    shapes: Sequence[str]
    classifiers: Sequence[str]
    taps: Sequence[str] = ()
    layer_splits: Sequence[str] = (SOURCE_TRAIN, TARGET)
    estimators: Sequence[str] = field(default_factory=tuple)
    control_losses: Sequence[str] = ()


def trial_metrics(spec: MetricSpec) -> dict[str, list[str]]:
    """Every metric name a trial with this evaluation reports, grouped (group -> sorted names).

    Groups: training (every epoch), source (evaluation on source classes), collapse, fewshot,
    bound, layers, transfer. Empty groups are left out.
    """
    for shape in spec.shapes:
        parse_shape(shape)
    groups: dict[str, list[str]] = {
        "training": [*TRAINING_METRICS, *(n for n in spec.control_losses
                                           if n in CONTROL_LOSSES)],
        "source": [SOURCE_TEST_ACC, NC3_SOURCE, NC4_SOURCE_TEST, EVAL_TIME],
        "collapse": [collapse_key(f, s) for f in COLLAPSE_FAMILIES for s in SPLITS],
        "fewshot": [fewshot_key(shape, clf, stat) for shape in spec.shapes
                    for clf in spec.classifiers for stat in FEWSHOT_STATS],
        "bound": [bound_key(shape) for shape in spec.shapes]
                 + [bound_cantelli_key(shape) for shape in spec.shapes],
        "layers": [layer_key(check_name_part("evaluation.layers", tap), f, s)
                   for tap in spec.taps for f in LAYER_FAMILIES for s in spec.layer_splits]
                  + [layer_fewshot_key(tap, shape) for tap in spec.taps for shape in spec.shapes],
        "transfer": [transfer_key(e) for e in spec.estimators],
    }
    return {g: sorted(set(names)) for g, names in groups.items() if names}


def all_names(spec: MetricSpec) -> set[str]:
    """`trial_metrics` flattened into one set."""
    return {name for names in trial_metrics(spec).values() for name in names}


# Names the study analysis reads most.
CDNV_TARGET = collapse_key("cdnv", TARGET)


# ---- reading names back ----------------------------------------------------------------------
def family_of(name: str) -> str:
    """`cdnv/target` -> "cdnv"; `fewshot/5w5s/ncc/acc` -> "fewshot"."""
    return name.split("/", 1)[0]


_TRIAL_FAMILIES = frozenset({
    *(family_of(n) for n in (*TRAINING_METRICS, SOURCE_TEST_ACC, NC3_SOURCE, NC4_SOURCE_TEST)),
    *COLLAPSE_FAMILIES, "fewshot", family_of(bound_key("5w5s")), BOUND_CANTELLI_PREFIX,
    LAYER_PREFIX, TRANSFER_PREFIX,
})


def is_trial_metric(name: str) -> bool:
    """Whether a reported key is a contract metric a trial logs (its family is one of ours).

    Tune adds its own keys to every result (`training_iteration`, `time_this_iter_s`, ...);
    tracking logs only the contract's names, so MLflow holds exactly `nctune metrics`' list.
    """
    return "/" in name and family_of(name) in _TRIAL_FAMILIES


def is_collapse(name: str) -> bool:
    """A penultimate-layer collapse statistic of one split (`cdnv/target`, `nc1/source_train`)."""
    parts = name.split("/")
    return len(parts) == 2 and parts[0] in COLLAPSE_FAMILIES and parts[1] in SPLITS


def is_fewshot_acc(name: str) -> bool:
    """`fewshot/<shape>/<clf>/acc` at the penultimate layer."""
    parts = name.split("/")
    return len(parts) == 4 and parts[0] == "fewshot" and parts[3] == "acc" and is_shape(parts[1])


def split_fewshot_key(name: str) -> tuple[str, str, str]:
    """`fewshot/5w5s/ncc/acc` -> ("5w5s", "ncc", "acc")."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "fewshot":
        raise InputError(f"'{name}' is not a few-shot metric name (fewshot/<shape>/<clf>/<stat>)")
    return parts[1], parts[2], parts[3]


def layer_taps(names_: Iterable[str], family: str = "cdnv", split: str = TARGET) -> list[str]:
    """The taps that have `layer/<tap>/<family>/<split>` among `names_`, in order of first
    appearance (the study analysis orders them by depth itself)."""
    out: dict[str, None] = {}
    for name in names_:
        parts = name.split("/")
        if len(parts) == 4 and parts[0] == LAYER_PREFIX and parts[2:] == [family, split]:
            out[parts[1]] = None
    return list(out)


# ---- what a name is (its family's descriptor, analysis.descriptors) ----------------------------
def _family_key(name: str) -> str:
    """The registry key of a name once probe/<n>/ and layer/<tap>/ are peeled off."""
    parts = name.split("/")
    if parts[0] in (PROBE_PREFIX, LAYER_PREFIX) and len(parts) > 3 - (parts[0] == PROBE_PREFIX):
        return _family_key("/".join(parts[2:]))
    if parts[0] == TRANSFER_PREFIX and len(parts) == 3:
        return f"{parts[0]}/{parts[1]}"
    return name if name in REGISTRY else parts[0]


def descriptor(name: str) -> Descriptor | None:
    """The descriptor of any logged name (layer and probe names describe their inner metric),
    or None for a name no family claims."""
    return REGISTRY.get(_family_key(name))


def direction(name: str) -> int:
    """+1 if higher values should mean better transfer, -1 if lower, 0 if neither or unknown."""
    d = descriptor(name)
    return d.direction if d else 0


def log_scale(name: str) -> bool:
    """Whether the metric spans orders of magnitude (plot and fit it on a log scale)."""
    d = descriptor(name)
    return bool(d and d.log_scale)


def is_collapse_family(name: str) -> bool:
    """Whether `name` measures collapse (CDNV, NC1-NC4, at any layer or probe)."""
    d = descriptor(name)
    return bool(d and d.collapse)


def describe(name: str) -> str:
    """A metric in words: 'fewshot/5w5s/ncc/acc' -> '5-way 5-shot NCC accuracy';
    'cdnv/target' -> 'target CDNV'; 'layer/layer3/cdnv/target' -> 'layer3 target CDNV';
    'transfer/knn/target' -> 'k-NN leave-one-out accuracy (target)'. Unknown names come back as
    they are."""
    parts = name.split("/")
    if parts[0] == PROBE_PREFIX and len(parts) > 2:
        return f"{describe('/'.join(parts[2:]))} on '{parts[1]}'"
    if parts[0] == LAYER_PREFIX and len(parts) > 3:
        return f"{parts[1]} {describe('/'.join(parts[2:]))}"
    d = descriptor(name)
    if d is None:
        return name
    if d.family == "fewshot" and len(parts) == 4 and is_shape(parts[1]):
        n, k = parse_shape(parts[1])
        what = "accuracy" if parts[3] == "acc" else "accuracy's 95% half-width"
        return f"{n}-way {k}-shot {CLASSIFIER_LABELS.get(parts[2], parts[2])} {what}"
    if d.family.startswith(TRANSFER_PREFIX + "/"):
        return f"{d.label} ({parts[2]})"
    if d.splits and len(parts) == 2 and parts[1] in d.splits:
        return f"{parts[1].replace('_', '-')} {d.label}"
    if d.family in ("bound", BOUND_CANTELLI_PREFIX) and len(parts) == 2 and is_shape(parts[1]):
        n, k = parse_shape(parts[1])
        return f"{d.label}, {n}-way {k}-shot"
    return d.label
