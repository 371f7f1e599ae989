"""`nctune datasets list` and `nctune datasets show NAME --out grid.png`: see the data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from analysis.errors import InputError

SPLIT_CHOICES = ("source_train", "source_test", "target")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `nctune datasets list|show` to the CLI."""
    p = sub.add_parser("datasets", help="list the data sets, or draw samples of one",
                       description="Inspect the data sets trials train and evaluate on.")
    dsub = p.add_subparsers(dest="datasets_command", metavar="{list,show}")
    q = dsub.add_parser("list", help="the registered data sets with their class counts")
    q.set_defaults(func=cmd_list)
    q = dsub.add_parser("show", help="write a PNG grid of samples, one row per class")
    q.add_argument("name", help="data set name (see `nctune datasets list`)")
    q.add_argument("--out", default=None, help="PNG file to write (default: <name>-<split>.png)")
    q.add_argument("--split", choices=SPLIT_CHOICES, default="source_train",
                   help="which split to draw from (default: source_train)")
    q.add_argument("--classes", type=int, default=16, help="rows: classes shown (default 16)")
    q.add_argument("--per-class", type=int, default=12,
                   help="columns: images per class shown (default 12)")
    q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a dataset option, e.g. --set image_size=28 or --set dataset.root=/data "
                   "(repeatable)")
    q.set_defaults(func=cmd_show)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def cmd_list(args: argparse.Namespace) -> int:
    """A table of the registered data sets with their class counts and whether they are available
    here."""
    from trainables.data import get_dataset_class, list_datasets

    rows = []
    for name in list_datasets():
        cls = get_dataset_class(name)
        rows.append((name, cls.summary(), cls.canonical or "-", cls.description))
    widths = [max(len(r[i]) for r in [("NAME", "CLASSES", "CANONICAL", ""), *rows])
              for i in range(3)]
    print(f"{'NAME':<{widths[0]}}  {'CLASSES':<{widths[1]}}  {'CANONICAL':<{widths[2]}}  ABOUT")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    return 0


def parse_overrides(name: str, overrides: list[str]) -> dict[str, Any]:
    """`key=value` strings (bare or `dataset.`-prefixed) to DatasetConfig fields, YAML-typed."""
    import yaml

    from trainables.config import DatasetConfig

    fields: dict[str, Any] = {"name": name}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().removeprefix("dataset.")
        if not sep or key not in DatasetConfig.model_fields or key == "name":
            known = ", ".join(k for k in DatasetConfig.model_fields if k != "name")
            raise InputError(f"--set: {item!r} is not KEY=VALUE with a dataset option; "
                             f"known: {known}")
        fields[key] = yaml.safe_load(raw)
    return fields


def grid_image(images: np.ndarray, labels: np.ndarray, classes: int, per_class: int) -> tuple[
    np.ndarray, list[int]
]:
    """Mosaic (rows*H, cols*W, C) of the first `per_class` images of the first `classes` labels."""
    shown = [int(c) for c in np.unique(labels)[:classes]]
    _, ch, h, w = images.shape
    pad = 2
    grid = np.zeros((len(shown) * (h + pad), per_class * (w + pad), ch), np.uint8)
    for r, c in enumerate(shown):
        for k, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
            grid[r * (h + pad) : r * (h + pad) + h, k * (w + pad) : k * (w + pad) + w] = \
                images[i].transpose(1, 2, 0)
    return grid, shown


def cmd_show(args: argparse.Namespace) -> int:
    """Draw a grid of sample images, one row per class, to a PNG: look at the data before training
    on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainables.config import DatasetConfig
    from trainables.data import load_splits

    if args.classes < 1 or args.per_class < 1:
        raise InputError(f"--classes/--per-class: need at least 1; got {args.classes} and "
                         f"{args.per_class}")
    cfg = DatasetConfig(**parse_overrides(args.name, args.overrides))
    data = load_splits(cfg)
    split = getattr(data, args.split)
    grid, shown = grid_image(split.images.numpy(), split.labels.numpy(), args.classes,
                             args.per_class)
    cell = grid.shape[0] / max(len(shown), 1)
    fig_h = max(2.0, 0.42 * len(shown) + 0.6)
    fig, ax = plt.subplots(figsize=(3.0 + 0.42 * args.per_class, fig_h), dpi=110)
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_yticks([(r + 0.5) * cell - 1 for r in range(len(shown))])
    ax.set_yticklabels([split.class_names[c][:34] for c in shown], fontsize=7)
    ax.set_xticks([])
    m = data.manifest
    ax.set_title(f"{cfg.name} {args.split}: {len(shown)} of {split.num_classes} classes, "
                 f"{cfg.image_size}px, split seed {cfg.split_seed} ({m['content_hash'][:10]})",
                 fontsize=8)
    fig.tight_layout()
    out = Path(args.out or f"{cfg.name}-{args.split}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    counts = ", ".join(f"{s} {m['counts'][s]['classes']}x{m['counts'][s]['per_class']}"
                       for s in SPLIT_CHOICES)
    print(f"{out}: {len(shown)} classes x {args.per_class} images of {args.split} "
          f"({counts}; of {m['classes_available']} classes; hash {m['content_hash'][:16]})")
    return 0
