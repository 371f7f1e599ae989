"""How the verdict reads the headline Spearman and the partial Spearman: one decision table.

`ROWS` is the table, as data: the README's section "How the verdict is decided" is
`markdown_table()` (a test checks they are the same text), and `partial_line` picks the one row
that matches. Each estimate is classified as

- clear: its interval excludes 0 AND p < 0.05 (over trials both come from one Fisher-z method, so
  they agree; `split` is the row for when they do not, which the code never prints as evidence);
- not clear: the interval covers 0 and p >= 0.05;
- split: the interval and the test disagree;
- withheld (partial only): no interval, with the reason (the control ranks a variable almost
  perfectly, too few trials, ...).

Sign compares the point estimates of the partial and the headline; size compares |partial| with
half of |headline|. A sign reversal (partial clearly of the opposite sign) and a sign flip (the
point estimate of the opposite sign, interval covering 0) are named as such; a share of the size
("keeps 56%") is only ever given when the signs agree.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

ANY = "any"
STATES = ("clear", "not clear", "split", "withheld")


@dataclass(frozen=True)
class Row:
    """One line of the decision table: the conditions and the sentence (a format template)."""

    headline: str  # clear | not clear
    partial: str  # one of STATES
    sign: str  # same | opposite | any
    size: str  # >= half | < half | any
    sentence: str


ROWS = (
    Row("clear", "clear", "same", ANY,
        "The association holds at equal source accuracy too (partial {ps}), so it is not only a "
        "by-product of better source models."),
    Row("clear", "clear", "opposite", ANY,
        "Sign reversal: at equal source accuracy the association runs the other way (partial "
        "{ps}, against Spearman {s}). The raw association comes from source accuracy; at equal "
        "source accuracy lower target CDNV went with {other} transfer."),
    Row("clear", "not clear", "same", ">= half",
        "At equal source accuracy the estimate keeps {pct} of its size but its interval covers 0 "
        "(partial {ps}): these trials cannot tell a direct link apart from better source models "
        "both collapsing more and transferring better."),
    Row("clear", "not clear", "same", "< half",
        "Source accuracy accounts for most of it (partial {ps}): better source models both "
        "collapsed more and transferred better, and at equal source accuracy no clear "
        "association is left, so these trials give no evidence of a direct link."),
    Row("clear", "not clear", "opposite", ANY,
        "Sign flip: at equal source accuracy the point estimate has the opposite sign (partial "
        "{ps}) and its interval covers 0: nothing of the raw association is left once source "
        "accuracy is held equal, so these trials give no evidence of a direct link."),
    Row("not clear", "clear", ANY, ANY,
        "At equal source accuracy an association appears (partial {ps}) that the raw correlation "
        "does not show; read it with care."),
    Row("not clear", "not clear", ANY, ANY,
        "At equal source accuracy there is no clear association either (partial {ps})."),
    Row(ANY, "split", ANY, ANY,
        "At equal source accuracy the interval and the test disagree (partial {ps}): the "
        "evidence for a direct link is weak and inconsistent."),
    Row(ANY, "withheld", ANY, ANY, "No partial correlation: {reason}."),
)


def state(e: Any) -> str:
    """clear / not clear / split / withheld for an Estimate-like row (module docstring)."""
    if not (np.isfinite(e.estimate) and np.isfinite(e.ci_low) and np.isfinite(e.ci_high)):
        return "withheld"
    excludes = bool(e.ci_low > 0 or e.ci_high < 0)
    test = bool(np.isfinite(e.p_value) and e.p_value < 0.05)
    return "clear" if excludes and test else "not clear" if not (excludes or test) else "split"


def claims_evidence(e: Any) -> bool:
    """Whether the verdict states this estimate as an association (what the calibration tests
    count under the null)."""
    return state(e) == "clear"


def match(headline: str, partial: str, sign: str, size: str) -> list[Row]:
    """Every row whose conditions hold (the table is built so that exactly one does)."""
    return [r for r in ROWS if r.headline in (ANY, headline) and r.partial == partial
            and r.sign in (ANY, sign) and r.size in (ANY, size)]


def partial_line(s: Any, ps: Any, ci_text: Any, p_is: Any) -> str:
    """The sentence the table gives for headline `s` and partial `ps` (Estimate-like rows).

    Args:
        ci_text: Estimate -> '−0.81 [−0.92, −0.62]'; p_is: p -> 'p = 0.01'.
    """
    h = "clear" if state(s) == "clear" else "not clear"
    p = state(ps)
    sign = "same" if np.sign(ps.estimate) == np.sign(s.estimate) else "opposite"
    size = ">= half" if abs(ps.estimate) >= abs(s.estimate) / 2 else "< half"
    (row,) = match(h, p, sign, size)
    ps_text = (f"{ci_text(ps)}, {p_is(ps.p_value)}" if p != "withheld" else "")
    pct = f"{abs(ps.estimate / s.estimate):.0%}" if s.estimate else "n/a"
    return row.sentence.format(ps=ps_text, s=ci_text(s), pct=pct,
                               other="better" if ps.estimate < 0 else "worse",
                               reason=getattr(ps, "reason", "") or "no interval")


def combinations() -> list[tuple[str, str, str, str]]:
    """Every (headline, partial, sign, size) the verdict can meet."""
    return list(itertools.product(("clear", "not clear"), STATES, ("same", "opposite"),
                                  (">= half", "< half")))


def markdown_table() -> str:
    """The decision table as the README prints it."""
    lines = ["| headline Spearman | partial Spearman | sign of partial vs headline | "
             "size of partial | sentence |", "|---|---|---|---|---|"]
    for r in ROWS:
        text = r.sentence.replace("{", "⟨").replace("}", "⟩")
        lines.append(f"| {r.headline} | {r.partial} | {r.sign} | {r.size} | {text} |")
    return "\n".join(lines)
