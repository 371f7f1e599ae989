"""The classes of the `glyphs` data set: letters and digits of the fonts that ship in matplotlib.

One class per distinct letter or digit, decided once per matplotlib version and cached:

1. Faces: the 16 DejaVu Sans / Sans Mono / Serif and STIX General faces (regular, bold, italic,
   bold italic). Not LastResortHE (one placeholder per Unicode block), not the STIX "NonUni" and
   size variants (private-use code points), not the Computer Modern faces (TeX encodings).
2. Characters: Unicode letters (Lu, Ll, Lt, Lo) and decimal digits (Nd) present in at least
   `MIN_FACES` faces, excluding characters that decompose (NFD: é = e + accent; NFKC: ligatures,
   superscripts, presentation forms) since those are another letter plus a mark, not a letter.
3. Homoglyphs: each character's mean render (over its faces) is correlated with every other;
   the most correlated pair of groups is merged while any correlation exceeds `HOMOGLYPH_CORR`
   (greedy centroid agglomeration), so Latin A, Greek Alpha and Cyrillic A become one class and
   no two final classes have mean renders that correlate above the threshold.

Renders keep the em box: a glyph sits on a fixed baseline at a fixed size, so `o`/`O` and `x`/`X`
stay apart by size and position, as they do on paper.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.ft2font import FT2Font, LoadFlags

from trainables.data.cache import cached_arrays, source_hash

FACES = (
    "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique",
    "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique",
    "DejaVuSansMono-BoldOblique",
    "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic",
    "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta",
)  # fmt: skip
MIN_FACES = 8  # present in at least half the faces: rare glyphs would have too little variety
HOMOGLYPH_CORR = 0.95
MERGE_RES = 32  # resolution at which mean renders are compared (the default image size)
LETTER_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lo", "Nd"})
# Scripts named by the first word of a character's Unicode name; characters of no script (the
# digits 0-9, letterlike symbols such as TURNED CAPITAL F) are written with Latin: COMMON.
SOURCE_SCRIPTS = ("LATIN", "GREEK", "CYRILLIC", "COMMON")
_SCRIPT_WORDS = frozenset(
    {
        "LATIN", "GREEK", "CYRILLIC", "ARMENIAN", "GEORGIAN", "HEBREW", "ARABIC", "LAO", "THAI",
        "COPTIC", "GLAGOLITIC", "CHEROKEE", "OGHAM", "RUNIC", "TIFINAGH", "NKO", "OL", "CANADIAN",
        "DEVANAGARI", "BENGALI",
    }
)
EM = 0.70  # glyph em size as a fraction of the canvas: ascender to descender fits with margins
BASELINE = 0.70  # baseline row as a fraction of the canvas height, from the top
MARGIN = 0.04  # a glyph that would cross this border is shifted (or shrunk) to stay inside


def font_dir() -> Path:
    """Where matplotlib keeps the TrueType fonts the glyphs are rendered from."""
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@cache
def load_faces() -> tuple[FT2Font, ...]:
    """The FT2Font objects of `FACES` (one per process: they keep FreeType state)."""
    return tuple(FT2Font(str(font_dir() / f"{name}.ttf")) for name in FACES)


def script_of(ch: str) -> str:
    """The script of a character from its Unicode name (COMMON when it names none)."""
    word = unicodedata.name(ch, "").split(" ")[0]
    return word if word in _SCRIPT_WORDS else "COMMON"


def is_letter(ch: str) -> bool:
    """A letter or digit that is not another letter plus a mark, nor a compatibility form."""
    return (
        unicodedata.category(ch) in LETTER_CATEGORIES
        and unicodedata.normalize("NFD", ch) == ch
        and unicodedata.normalize("NFKC", ch) == ch
    )


def render(face: FT2Font, ch: str, res: int) -> np.ndarray | None:
    """Anti-aliased coverage of `ch` on a `res`×`res` canvas in the em box (float32 in [0, 1]).

    Returns None when the face draws nothing for `ch`.
    """
    em = EM * res
    for _ in range(3):  # shrink a glyph too large for the canvas (rare: tall stacked letters)
        face.set_size(em, 72)  # points at 72 dpi = pixels
        face.set_text(ch, 0.0, flags=LoadFlags.NO_HINTING)
        face.draw_glyphs_to_bitmap(antialiased=True)
        img = np.asarray(face.get_image())
        rows, cols = np.nonzero(img.any(axis=1))[0], np.nonzero(img.any(axis=0))[0]
        if rows.size == 0:
            return None
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        room = res * (1 - 2 * MARGIN)
        if max(h, w) <= room:
            break
        em *= 0.95 * room / max(h, w)
    ink = img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32) / 255.0
    # The bitmap's last row lies one pixel below the lowest ink; the baseline sits `descent`
    # (26.6 fixed point, negative for glyphs above the baseline) above that.
    baseline_in_img = img.shape[0] - 1 - face.get_descent() / 64.0
    lo, hi = round(MARGIN * res), res - round(MARGIN * res)
    top = round(BASELINE * res - baseline_in_img + rows[0])
    top = min(max(top, lo), max(lo, hi - h))
    left = max(0, (res - w) // 2)
    canvas = np.zeros((res, res), np.float32)
    canvas[top : top + h, left : left + w] = ink[: res - top, : res - left]
    return canvas


def downsample(images: np.ndarray, res: int) -> np.ndarray:
    """Box-average (..., R, R) renders to (..., res, res); R must be a multiple of res."""
    f = images.shape[-1] // res
    return images.reshape(*images.shape[:-2], res, f, res, f).mean(axis=(-3, -1))


@dataclass(frozen=True)
class GlyphClass:
    """One class: homoglyph characters and, for each, the faces (indices into FACES) with it."""

    name: str
    members: str
    faces: tuple[tuple[int, ...], ...]
    scripts: tuple[str, ...]

    @property
    def is_source_script(self) -> bool:
        """In the canonical `script` split, a class is source if any member is Latin-written."""
        return any(s in SOURCE_SCRIPTS for s in self.scripts)

    def pairs(self) -> list[tuple[str, int]]:
        """Every (character, face index) this class can be drawn from."""
        return [(ch, f) for ch, fs in zip(self.members, self.faces, strict=True) for f in fs]


def candidate_renders(res: int) -> tuple[list[str], list[list[int]], np.ndarray]:
    """Characters kept by the letter and face-count rules, their faces and mean renders."""
    faces = load_faces()
    present: dict[str, list[int]] = {}
    for fi, face in enumerate(faces):
        for cp, gid in face.get_charmap().items():
            if gid and is_letter(chr(cp)):
                present.setdefault(chr(cp), []).append(fi)
    chars = sorted(ch for ch, fs in present.items() if len(fs) >= MIN_FACES)
    kept, kept_faces, means = [], [], []
    for ch in chars:
        renders = [(fi, render(faces[fi], ch, 2 * res)) for fi in present[ch]]
        drawn = [(fi, r) for fi, r in renders if r is not None]
        if len(drawn) < MIN_FACES:  # mapped but empty in some faces
            continue
        kept.append(ch)
        kept_faces.append([fi for fi, _ in drawn])
        means.append(downsample(np.mean([r for _, r in drawn], axis=0), res))
    return kept, kept_faces, np.stack(means)


def merge_homoglyphs(means: np.ndarray, weights: np.ndarray, threshold: float) -> list[list[int]]:
    """Greedily merge the most correlated pair of groups while any correlation > threshold.

    Args:
        means: (N, ...) mean render of each item.
        weights: (N,) how many renders each mean averages (a group's mean is their weighted mean).
        threshold: Pearson correlation above which two groups are one.

    Returns:
        Groups of item indices; the correlation between any two groups' means is <= threshold.
    """
    sums = means.reshape(len(means), -1).astype(np.float64) * weights[:, None]
    counts = weights.astype(np.float64).copy()
    groups: list[list[int]] = [[i] for i in range(len(means))]
    alive = np.ones(len(means), bool)

    def unit(rows: np.ndarray) -> np.ndarray:
        z = rows - rows.mean(axis=-1, keepdims=True)
        return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)

    z = unit(sums / counts[:, None])
    corr = z @ z.T
    np.fill_diagonal(corr, -np.inf)
    while True:
        i, j = np.unravel_index(np.argmax(corr), corr.shape)
        if corr[i, j] <= threshold:
            break
        i, j = min(i, j), max(i, j)
        sums[i] += sums[j]
        counts[i] += counts[j]
        groups[i] += groups[j]
        alive[j] = False
        corr[j, :] = corr[:, j] = -np.inf
        zi = unit(sums[i] / counts[i])
        row = z @ zi
        z[i] = zi
        row[~alive] = -np.inf
        row[i] = -np.inf
        corr[i, :] = corr[:, i] = row
    return [sorted(groups[i]) for i in np.flatnonzero(alive)]


def _build_classes() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    chars, faces, means = candidate_renders(MERGE_RES)
    weights = np.array([len(f) for f in faces])
    groups = merge_homoglyphs(means, weights, HOMOGLYPH_CORR)
    classes: list[dict[str, Any]] = []
    for group in groups:
        # The member drawn by most faces names the class (ties: lowest code point, so Latin).
        order = sorted(group, key=lambda k: (-len(faces[k]), ord(chars[k])))
        classes.append(
            {
                "name": unicodedata.name(chars[order[0]]),
                "members": "".join(chars[k] for k in order),
                "faces": [faces[k] for k in order],
                "scripts": sorted({script_of(chars[k]) for k in order}),
            }
        )
    classes.sort(key=lambda c: ord(c["members"][0]))
    extra = {"classes": classes, "candidates": len(chars)}
    return {"candidate_means": means.astype(np.float32)}, extra


def glyph_classes() -> list[GlyphClass]:
    """The classes of the glyph set (computed once per matplotlib version, then cached)."""
    parts = {"code": source_hash(__name__), "matplotlib": matplotlib.__version__,
             "faces": FACES, "min_faces": MIN_FACES, "threshold": HOMOGLYPH_CORR,
             "res": MERGE_RES, "unicode": unicodedata.unidata_version}
    _, extra = cached_arrays("glyph-classes", parts, _build_classes)
    return [
        GlyphClass(c["name"], c["members"], tuple(tuple(f) for f in c["faces"]),
                   tuple(c["scripts"]))
        for c in extra["classes"]
    ]
