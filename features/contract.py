"""What the raw contract accepts: the one checker for tables and for records.

``features.schema`` says what each column is (type, unit, range); this module says, once,
which values are refused and in which words. Two callers, one rule set:

- ``features.validate.validate_raw`` (``refracture validate``, training) on tables, which
  names each problem by table, row key and column;
- ``features.records.inspect_records`` (the service, ``refracture predict``) on records,
  which names it by JSON path.

So the service and ``refracture validate`` refuse exactly the same values by construction
(``tests/features/test_contract.py`` checks it over generated values). The service's request models
(``serving.http.schemas``) document the same bounds, taken from here and from the schema.

Two kinds of rules:

``column_problems``
    one cell at a time: unreadable, required but missing, outside the range or the
    allowed values, text too long, a date in the future.
``plausibility_problems``
    between the fields of one procedure, as a radiologist would check them (cement,
    bone density, heights, HU of the neighbours). They take the procedure's fields by
    their flat record names (``hu_upper_adjacent_postop``) and skip fields that are absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from features.coerce import DATE_MAX, DATE_MIN, NUMERIC_KINDS, typed_missing, unreadable_text
from features.schema import ColumnSpec

#: Longest text accepted in any text field (ids, categories): longer text is not a key
#: or a category but a mistake (a pasted note), and the service must not echo it back.
MAX_TEXT_CHARS = 200
#: A date more than this many days after today is in the future (one day of slack for
#: time zones between the exporting site and the server).
FUTURE_SLACK_DAYS = 1
#: Trabecular bone, however dense, stays below this attenuation; above it the vertebra
#: holds cement (PMMA ~1,000 HU or more).
NATIVE_BONE_MAX_HU = 600.0
#: If every vertebral height of an examination is below this, the heights were written
#: in cm: a healthy neighbour is at least ~15 mm tall even at T1, and a vertebra plana
#: next to healthy neighbours leaves at least one height above it.
CM_LIKE_HEIGHT_MM = 6.5
#: BMD and T-score are coherent when BMD = mean + T x SD for some young-adult reference:
#: means 0.85 (femoral neck, Hologic) to 1.20 g/cm² (lumbar spine, GE Lunar), SDs 0.11 to
#: 0.14 g/cm² (NHANES III and the manufacturers' spine references), with 0.15 g/cm² of
#: slack for other reference databases and rounding. BMD 1.8 with T −7 is far outside.
BMD_REFERENCE_MEAN_G_CM2 = (0.85, 1.20)
BMD_REFERENCE_SD_G_CM2 = (0.11, 0.14)
BMD_T_SCORE_SLACK_G_CM2 = 0.15
#: A fractured vertebra is lower than its healthy neighbours: a pre-operative compression
#: rate (height / neighbours' mean, ``features.morphometry``) above this means a
#: neighbour is fractured too, which needs a neighbour treated in the same session or an
#: earlier fracture.
MAX_COMPRESSION_RATE_PCT = 100.0
#: A neighbour lower than this share of the other neighbour's height is itself collapsed
#: (healthy adjacent vertebrae differ by a few percent; Genant's mild grade starts at 20-25 %).
COLLAPSED_NEIGHBOUR_RATIO = 0.75
#: ... or lower than this: no healthy vertebra from T1 to L5 is (a vertebra plana is 2-8 mm).
COLLAPSED_NEIGHBOUR_MM = 10.0


def today() -> pd.Timestamp:
    """Today's date (midnight), the reference for "in the future"."""
    return pd.Timestamp.today().normalize()


def latest_date() -> pd.Timestamp:
    """The latest date the contract accepts (today plus the time-zone slack)."""
    return min(today() + pd.Timedelta(days=FUTURE_SLACK_DAYS), DATE_MAX)


def allowed_text(spec: ColumnSpec) -> str:
    """What the contract allows in a column, in words (range with unit, allowed values)."""
    if spec.kind == "date":
        return f"a date YYYY-MM-DD from {DATE_MIN.date()} to today"
    unit = f" {spec.unit}" if spec.unit and spec.kind in ("int", "float") else ""
    return (spec.range_text + unit).strip()


# ------------------------------------------------------------------------ one column


def _absent(values: np.ndarray) -> np.ndarray:
    """True where a typed column (``features.coerce.coerce_array`` output) has no value."""
    return typed_missing(values)


def column_problems(raw: np.ndarray | pd.Series, values: np.ndarray, unreadable: np.ndarray, spec: ColumnSpec,
                    required: bool) -> list[tuple[int, str]]:
    """Every refused cell of one column: (position, message), in position order.

    ``raw``: the cells as received; ``values`` / ``unreadable``: ``coerce_array(raw, kind)``;
    ``required``: a missing value is refused (not-nullable columns of tables; required
    record fields). The loops visit only offending cells.
    """
    missing = _absent(values) & ~unreadable
    present = ~missing & ~unreadable
    problems: list[tuple[int, str]] = []
    for i in np.flatnonzero(unreadable):
        cell = raw.iat[i] if isinstance(raw, pd.Series) else raw[i]
        problems.append((int(i), unreadable_text(cell, spec.kind)))
    if required:
        problems.extend((int(i), "value missing (required)") for i in np.flatnonzero(missing))
    if spec.allowed:
        bad = present & ~np.isin(values, np.array(spec.allowed, dtype=object))
        problems.extend((int(i), f"{values[i]!r} is not allowed (must be one of: {spec.range_text})")
                        for i in np.flatnonzero(bad))
    elif spec.kind == "binary":
        bad = present & (values != 0) & (values != 1)
        problems.extend((int(i), f"{float(values[i]):g} is not 0 or 1") for i in np.flatnonzero(bad))
    elif spec.kind in ("int", "float") and (spec.min is not None or spec.max is not None):
        lo = -np.inf if spec.min is None else spec.min
        hi = np.inf if spec.max is None else spec.max
        with np.errstate(invalid="ignore"):
            bad = present & ((values < lo) | (values > hi))
        for i in np.flatnonzero(bad):
            v = float(values[i])
            hint = spec.hint_for(v)
            problems.append((int(i), f"{v:g} {spec.unit} is outside the allowed range {allowed_text(spec)}"
                                     .replace("  ", " ") + (f" ({hint})" if hint else "")))
    elif spec.kind in ("id", "str", "category"):
        # The longest text first (one C-level pass): the per-cell search runs only if too long.
        longest = max(map(len, values[present]), default=0)
        long = (np.fromiter((v is not None and len(v) > MAX_TEXT_CHARS for v in values), dtype=bool, count=len(values))
                if longest > MAX_TEXT_CHARS else np.zeros(len(values), dtype=bool))
        problems.extend((int(i), f"text longer than {MAX_TEXT_CHARS} characters") for i in np.flatnonzero(long))
    elif spec.kind == "date" and present.any():  # (today's date costs ~50 µs: not for an empty column)
        latest = latest_date().to_datetime64()
        bad = present & (values > latest)
        problems.extend((int(i), f"{pd.Timestamp(values[i]):%Y-%m-%d} is in the future (today is {today():%Y-%m-%d})")
                        for i in np.flatnonzero(bad))
    problems.sort(key=lambda p: p[0])
    return problems


class ColumnScreen:
    """Which of a fixed list of columns ``column_problems`` may refuse a cell of, screened
    at once: False guarantees it finds nothing in that column, True means ask it.

    A request batch has ~50 fields and rarely a refused value: one NumPy screen over the
    numeric columns and a set test per text column, instead of ~50 calls of ~10 NumPy
    operations each. ``specs`` / ``required``: per column, as ``column_problems`` takes
    them; built once per list of columns. Date columns are always asked (whether a date is
    in the future depends on today).
    """

    def __init__(self, specs: tuple[ColumnSpec, ...], required: tuple[bool, ...]):
        self.specs, self.required = specs, required
        self.numeric = [j for j, s in enumerate(specs) if s.kind in NUMERIC_KINDS and not s.allowed]
        numeric = [specs[j] for j in self.numeric]
        # One row per numeric column. A 0/1 column's range is [0, 1], plus its own test below.
        self.lowest = np.array([0.0 if s.kind == "binary" else -np.inf if s.min is None else s.min for s in numeric])[:, None]
        self.highest = np.array([1.0 if s.kind == "binary" else np.inf if s.max is None else s.max for s in numeric])[:, None]
        self.binary = np.array([s.kind == "binary" for s in numeric], dtype=bool)[:, None]
        self.numeric_required = np.array([required[j] for j in self.numeric], dtype=bool)
        self.text = [j for j, s in enumerate(specs) if s.kind in ("id", "str", "category")]
        self.accepted = {j: frozenset(specs[j].allowed) | {None} for j in self.text if specs[j].allowed}

    def __call__(self, read: list[tuple[np.ndarray, np.ndarray]]) -> list[bool]:
        """``read``: per column, ``coerce_array``'s (values, unreadable). One bool per column."""
        out = [True] * len(self.specs)
        if self.numeric:
            values = np.stack([read[j][0] for j in self.numeric])
            unreadable = np.stack([read[j][1] for j in self.numeric])
            missing = np.isnan(values)
            with np.errstate(invalid="ignore"):
                outside = ((values < self.lowest) | (values > self.highest)
                           | (self.binary & (values != 0) & (values != 1) & ~missing))
            flagged = (unreadable | outside).any(axis=1) | (self.numeric_required & (missing & ~unreadable).any(axis=1))
            for j, flag in zip(self.numeric, flagged.tolist()):
                out[j] = flag
        for j in self.text:
            values, unreadable = read[j]
            cells = values.tolist()  # text: str, or None where missing
            out[j] = (bool(unreadable.any()) or (self.required[j] and None in cells)
                      or (not set(cells) <= self.accepted[j] if j in self.accepted
                          else any(len(v) > MAX_TEXT_CHARS for v in cells if v is not None)))
        return out


# ------------------------------------------------------------- between fields of one procedure


@dataclass(frozen=True)
class Implausible:
    """A value refused for what it says next to the procedure's other values."""

    position: int
    field: str  # flat record name of the field named in the error, e.g. 'dxa_t_score'
    message: str
    allowed: str


Columns = Mapping[str, np.ndarray]
_Rule = Callable[[Columns, int], list[Implausible]]


def _num(cols: Columns, name: str, n: int) -> np.ndarray:
    v = cols.get(name)
    return np.full(n, np.nan) if v is None else np.asarray(v, dtype="float64")


def _dates(cols: Columns, name: str, n: int) -> np.ndarray:
    v = cols.get(name)
    return np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]") if v is None else np.asarray(v, dtype="datetime64[ns]")


def _pain_onset_after_surgery(cols: Columns, n: int) -> list[Implausible]:
    """Back pain from the index fracture begins on or before the surgery (`pain_onset_date` ≤ `surgery_date`)."""
    surgery, onset = _dates(cols, "surgery_date", n), _dates(cols, "pain_onset_date", n)
    late = ~np.isnat(onset) & ~np.isnat(surgery) & (onset > surgery)
    return [Implausible(int(i), "pain_onset_date",
                        f"pain onset {pd.Timestamp(onset[i]):%Y-%m-%d} is after the surgery ({pd.Timestamp(surgery[i]):%Y-%m-%d})",
                        "on or before procedure.surgery_date")
            for i in np.flatnonzero(late)]


def _cement_sides(cols: Columns, n: int) -> list[Implausible]:
    """The fuller hemivertebra holds no more cement than was injected at the level (`cement_larger_side_volume_ml` ≤ `cement_volume_ml`), nor more than the whole vertebral body (≤ pre-operative `vertebral_body_volume_ml`)."""
    larger, total = _num(cols, "cement_larger_side_volume_ml_postop", n), _num(cols, "cement_volume_ml", n)
    body = _num(cols, "vertebral_body_volume_ml_preop", n)
    out = []
    with np.errstate(invalid="ignore"):
        for i in np.flatnonzero(larger > total):
            out.append(Implausible(int(i), "cement_larger_side_volume_ml_postop",
                                   f"the larger side holds {larger[i]:g} mL, more than the {total[i]:g} mL of cement "
                                   "injected at the level (procedure.cement_volume_ml)",
                                   "at most procedure.cement_volume_ml"))
        for i in np.flatnonzero(larger > body):
            out.append(Implausible(int(i), "cement_larger_side_volume_ml_postop",
                                   f"the larger side holds {larger[i]:g} mL, more than the whole vertebral body "
                                   f"({body[i]:g} mL, imaging.preop.vertebral_body_volume_ml)",
                                   "at most imaging.preop.vertebral_body_volume_ml"))
    return out


def bmd_range_for_t_score(t_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The areal BMD (g/cm²) coherent with each T-score, as (lowest, highest): see
    ``BMD_REFERENCE_MEAN_G_CM2``."""
    t = np.asarray(t_score, dtype="float64")
    corners = np.stack([m + t * s for m in BMD_REFERENCE_MEAN_G_CM2 for s in BMD_REFERENCE_SD_G_CM2])
    return corners.min(axis=0) - BMD_T_SCORE_SLACK_G_CM2, corners.max(axis=0) + BMD_T_SCORE_SLACK_G_CM2


def _bmd_t_score(cols: Columns, n: int) -> list[Implausible]:
    """`dxa_t_score` is coherent with `dxa_bmd_g_cm2`: BMD = mean + T × SD for a young-adult reference (means 0.85–1.20 g/cm², SDs 0.11–0.14 g/cm², ± 0.15 g/cm²); e.g. BMD 1.8 with T −7 is refused."""
    bmd, t = _num(cols, "dxa_bmd_g_cm2", n), _num(cols, "dxa_t_score", n)
    lo, hi = bmd_range_for_t_score(t)
    with np.errstate(invalid="ignore"):
        bad = (bmd < lo) | (bmd > hi)
    return [Implausible(int(i), "dxa_t_score",
                        f"T-score {t[i]:g} does not fit a BMD of {bmd[i]:g} g/cm² (a T-score of {t[i]:g} means about "
                        f"{max(lo[i], 0):.2f}–{hi[i]:.2f} g/cm² at any DXA site); check that both come from the same scan",
                        "a T-score coherent with patient.dxa_bmd_g_cm2")
            for i in np.flatnonzero(bad)]


def _cemented_neighbour_hu(cols: Columns, n: int) -> list[Implausible]:
    """A neighbour above 600 HU holds cement: before surgery that needs an earlier fracture (`prior_vertebral_fractures_n` ≥ 1), after it an earlier fracture or a neighbour treated in the same session (`n_levels_treated` ≥ 2)."""
    levels = _num(cols, "n_levels_treated", n)
    prior = _num(cols, "prior_vertebral_fractures_n", n)
    out = []
    for tp in ("preop", "postop"):
        # Before surgery only an earlier augmentation explains cement in a neighbour; after it,
        # also a neighbour treated in the same session.
        explained = prior >= 1 if tp == "preop" else (prior >= 1) | (levels >= 2)
        for side in ("upper", "lower"):
            name = f"hu_{side}_adjacent_{tp}"
            hu = _num(cols, name, n)
            with np.errstate(invalid="ignore"):
                bad = (hu > NATIVE_BONE_MAX_HU) & ~explained
            why = ("an earlier augmentation (patient.prior_vertebral_fractures_n is 0)" if tp == "preop" else
                   "a neighbour cemented in the same session or earlier (procedure.n_levels_treated is 1 and "
                   "patient.prior_vertebral_fractures_n is 0)")
            out += [Implausible(int(i), name,
                                f"{hu[i]:g} HU is cement, not bone (bone stays below {NATIVE_BONE_MAX_HU:g} HU), "
                                f"but nothing says this neighbour was cemented: {why}",
                                f"up to {NATIVE_BONE_MAX_HU:g} HU for a native neighbour")
                    for i in np.flatnonzero(bad)]
    return out


_TIMEPOINTS = ("preop", "postop", "followup")
_HEIGHTS = ("vertebral_height_mm", "upper_adjacent_height_mm", "lower_adjacent_height_mm")


def _heights_in_cm(cols: Columns, n: int) -> list[Implausible]:
    """Heights are in mm: an examination whose heights (at least two) are all below 6.5 mm was written in cm. A single low height (vertebra plana, near-complete collapse, down to 1 mm) is accepted."""
    out = []
    for tp in _TIMEPOINTS:
        names = [f"{h}_{tp}" for h in _HEIGHTS]
        if not any(name in cols for name in names):
            continue
        heights = np.stack([_num(cols, name, n) for name in names])
        known = ~np.isnan(heights)
        with np.errstate(invalid="ignore"):
            small = np.where(known, heights < CM_LIKE_HEIGHT_MM, True).all(axis=0) & (known.sum(axis=0) >= 2)
        for i in np.flatnonzero(small):
            shown = ", ".join(f"{h:g}" for h in heights[:, i] if not np.isnan(h))
            out.append(Implausible(int(i), names[0],
                                   f"every height of this examination is below {CM_LIKE_HEIGHT_MM:g} mm ({shown}): "
                                   "vertebral heights are in mm; these look like cm (multiply by 10)",
                                   "heights in mm"))
    return out


def _compression_rate(cols: Columns, n: int) -> list[Implausible]:
    """The pre-operative compression rate (height / neighbours' mean) is at most 100 %, unless a neighbour may be fractured too: treated in the same session (`n_levels_treated` ≥ 2), an earlier fracture (`prior_vertebral_fractures_n` ≥ 1), or visibly collapsed (below 75 % of the other neighbour's height, or below 10 mm: a vertebra plana)."""
    h, u, lo = (_num(cols, f"{name}_preop", n) for name in _HEIGHTS)
    with np.errstate(invalid="ignore", divide="ignore"):
        reference = np.nanmean(np.stack([u, lo]), axis=0) if n else np.empty(0)
        rate = 100.0 * h / reference
    levels, prior = _num(cols, "n_levels_treated", n), _num(cols, "prior_vertebral_fractures_n", n)
    with np.errstate(invalid="ignore"):
        collapsed_neighbour = ((np.fmin(u, lo) < COLLAPSED_NEIGHBOUR_RATIO * np.fmax(u, lo))
                               | (np.fmin(u, lo) < COLLAPSED_NEIGHBOUR_MM))
        bad = (rate > MAX_COMPRESSION_RATE_PCT) & ~(levels >= 2) & ~(prior >= 1) & ~collapsed_neighbour
    return [Implausible(int(i), "vertebral_height_mm_preop",
                        f"the fractured vertebra ({h[i]:g} mm) is taller than its neighbours (mean {reference[i]:g} mm): "
                        f"a compression rate of {rate[i]:.0f} % needs a fractured neighbour, yet the session treats one "
                        "level, the patient has no earlier fracture and both neighbours are of similar height. If a "
                        "neighbour is fractured, record the fracture (patient.prior_vertebral_fractures_n) or leave its "
                        "height empty (the other neighbour is then the reference)",
                        f"a pre-operative compression rate up to {MAX_COMPRESSION_RATE_PCT:g} %")
            for i in np.flatnonzero(bad)]


#: Every rule between the fields of one procedure, in report order.
PLAUSIBILITY_RULES: tuple[_Rule, ...] = (
    _pain_onset_after_surgery,
    _cement_sides,
    _bmd_t_score,
    _cemented_neighbour_hu,
    _heights_in_cm,
    _compression_rate,
)


def without(values: np.ndarray, positions) -> np.ndarray:
    """A copy of a typed column with the cells at ``positions`` made missing."""
    out = values.copy()
    positions = np.asarray(list(positions), dtype=int)
    if len(positions):
        out[positions] = np.nan if out.dtype.kind == "f" else np.datetime64("NaT") if out.dtype.kind == "M" else None
    return out


def plausibility_problems(cols: Columns, n: int) -> list[Implausible]:
    """Every implausible combination in ``n`` procedures given as typed columns by flat
    record name (numbers as float, dates as datetime64). Absent fields are skipped.

    Give it only values that passed ``column_problems`` (refused cells made missing,
    ``without``): a value already refused is reported once, for itself, and both callers
    then judge the same combinations."""
    out: list[Implausible] = []
    for rule in PLAUSIBILITY_RULES:
        out.extend(rule(cols, n))
    return out
