"""What the raw contract accepts: the one checker for tables and for records.

``features.schema`` says what each column is (type, unit, range); this module says, once,
which values are refused or questioned, in which words, and how sure the rule is. Two
callers, one rule set:

- ``features.validate.check_raw`` (``refracture validate``, training, site reports) on
  tables, which names each problem by table, row key and column;
- ``features.records.inspect_records`` (the service, ``refracture predict``) on records,
  which names it by JSON path.

So the service and ``refracture validate`` refuse, and question, exactly the same values by
construction (``tests/features/test_contract.py`` checks it over generated values). The
service's request models (``serving.http.schemas``) document the same bounds, taken from here
and from the schema.

Every rule reports with a severity:

``error``
    the value cannot be used as it stands: unreadable, missing though required, outside
    what the column can hold, impossible next to the procedure's other values, a unit
    slip. A table with errors is not trained on (unless the procedures holding them are
    excluded, ``features.exclusion``) and a record with errors is not scored.
``warning``
    implausible but possible (a fractured vertebra taller than its neighbours by more than
    measurement error, a neighbour that reads as cement with no earlier augmentation on
    record). The value is used; warnings are counted and reported, and never stop work.

Two kinds of rules:

``column_problems``
    one cell at a time (``COLUMN_RULES``, all errors): unreadable, required but missing,
    outside the range or the allowed values, text too long, a date in the future.
``plausibility_problems``
    between the fields of one procedure, as a radiologist would check them
    (``PLAUSIBILITY_RULES``: cement, bone density, heights and HU of the neighbours, and
    the same vertebra before and after surgery). They take the procedure's fields by their
    flat record names (``hu_upper_adjacent_postop``) and skip fields that are absent.
    Rules comparing two measurements allow for the measurement error of the instrument
    (``MEASUREMENT_ERRORS``: radiographic heights, CT attenuation, DXA), each a named
    constant with its source.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal, Mapping, NamedTuple

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
Severity = Literal["error", "warning"]
ERROR: Severity = "error"
WARNING: Severity = "warning"

#: Trabecular bone, however dense, stays below this attenuation; above it the vertebra
#: holds cement (PMMA ~1,000 HU or more).
NATIVE_BONE_MAX_HU = 600.0
#: If every vertebral height of an examination is below this, the heights were written
#: in cm: a healthy neighbour is at least ~15 mm tall even at T1, and a vertebra plana
#: next to healthy neighbours leaves at least one height above it.
CM_LIKE_HEIGHT_MM = 6.5
#: A height below ``CM_LIKE_HEIGHT_MM`` that is this many times smaller than the same
#: vertebra's height on another examination of the same stay (the other height at least
#: ``COLLAPSED_NEIGHBOUR_MM``) was written in cm: ten times, give or take measurement error
#: and, for the treated vertebra, the height an augmentation restores (project assumption:
#: x10 within -30 % to +40 %). No vertebra changes tenfold between the day before and the
#: day after surgery: a vertebra plana is not restored to a normal height, and cement does
#: not flatten one.
CM_SLIP_RATIO = (7.0, 14.0)
#: BMD and T-score are coherent when BMD = mean + T x SD for some young-adult reference:
#: means 0.85 (femoral neck, Hologic) to 1.20 g/cm² (lumbar spine, GE Lunar), SDs 0.11 to
#: 0.14 g/cm² (NHANES III and the manufacturers' spine references). BMD 1.8 with T −7 is
#: far outside.
BMD_REFERENCE_MEAN_G_CM2 = (0.85, 1.20)
BMD_REFERENCE_SD_G_CM2 = (0.11, 0.14)
#: The same women measure 0.10-0.12 g/cm² apart on Hologic and GE Lunar scanners (lumbar
#: L2-L4 0.950 vs 1.068, femoral neck 0.798 vs 0.895 g/cm²; Eur J Radiol 2007;62(3):423-6,
#: PMID 17289322): room for a reference database other than the two above.
DXA_MANUFACTURER_DIFFERENCE_G_CM2 = 0.12
#: The least significant change of DXA, 2.77 x the precision error (ISCD); in-vivo
#: precision errors are 1-2 % (spine CV 1.1-1.6 %, femoral neck 1.5-2.3 %: Wilson & Smith,
#: Hologic white paper, 57 studies), about 0.03 g/cm² at 1 g/cm². Room for a T-score and a
#: BMD copied from two scans.
DXA_LEAST_SIGNIFICANT_CHANGE_G_CM2 = 0.03
BMD_T_SCORE_SLACK_G_CM2 = DXA_MANUFACTURER_DIFFERENCE_G_CM2 + DXA_LEAST_SIGNIFICANT_CHANGE_G_CM2
#: One reading of a vertebral height on a lateral radiograph: SD in mm. Alanay 2007 (Eur
#: Spine J 16(12):2126-32, doi:10.1007/s00586-007-0474-z) found 95 % intra-observer
#: agreement intervals of ±4.5 to ±6.5 mm for vertebral body heights in osteoporotic
#: compression fractures; the narrowest, ±4.5 mm = 1.96 x √2 x SD, gives 1.6 mm (another
#: reader, or another radiograph, adds to it).
HEIGHT_READING_SD_MM = 1.6
#: Two radiographs of one patient on different days magnify the spine differently
#: (distance to the detector, standing or lying): heights compared across examinations may
#: differ by this share on top of the reading error (project assumption).
RADIOGRAPH_SCALE_SHARE = 0.05
#: Trabecular attenuation of one vertebra read on two CT series of the same patient differs
#: by SD 19.2 HU, around a mean shift of +11.2 HU with intravenous contrast (Pickhardt 2016,
#: Osteoporos Int 27(1):147-52: L1 in 157 adults, enhanced vs unenhanced series), which
#: also holds the spread of where the region of interest is drawn.
HU_SERIES_DIFFERENCE_SD = 19.2
HU_CONTRAST_SHIFT = 11.2
#: Two measurements disagree beyond measurement error when they differ by more than this
#: many SDs of their difference (99 % two-sided): rare enough that a warning means
#: something, on an export of 20,000 procedures.
AGREEMENT_Z = 2.58
#: The fuller hemivertebra measured on post-operative CT may exceed the injected volume
#: (or the vertebral body) by this share plus ``CT_VOLUME_SLACK_ML`` before it is refused:
#: CT volumes of dense cement blur over their edge (partial volume; project assumption).
CT_VOLUME_SLACK_SHARE = 0.10
CT_VOLUME_SLACK_ML = 0.2
#: Vertebroplasty restores little height: 4.44 ± 5.18 points of compression rate without a
#: cleft, 7.2-12.6 points more with one (Xiong 2021, clinical-evidence §2 and §4); its
#: 99th percentile with a cleft is about 4.4 + 2.58 x 5.2 + 12.6 = 30 points. A
#: vertebroplasty that restored more was probably a kyphoplasty, or the heights come from
#: different levels. (Kyphoplasty restores more: 3.7 mm more anterior height than
#: vertebroplasty, Xing 2013 J Clin Neurosci 20:795-803; it is bounded by the neighbours'
#: height, the compression-rate rule.)
PVP_MAX_RESTORATION_PCT = 30.0
#: A neighbour lower than this share of the other neighbour's height is itself collapsed
#: (healthy adjacent vertebrae differ by a few percent; Genant's mild grade starts at 20-25 %).
COLLAPSED_NEIGHBOUR_RATIO = 0.75
#: ... or lower than this: no healthy vertebra from T1 to L5 is (a vertebra plana is 2-8 mm).
COLLAPSED_NEIGHBOUR_MM = 10.0


def height_agreement_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How far apart two readings of one vertebra's height (mm) on two radiographs may be
    from measurement error alone: ``AGREEMENT_Z`` SDs of a difference of two readings, plus
    the radiographs' difference in scale (``RADIOGRAPH_SCALE_SHARE`` of the larger)."""
    return AGREEMENT_Z * HEIGHT_READING_SD_MM * np.sqrt(2.0) + RADIOGRAPH_SCALE_SHARE * np.fmax(a, b)


def excess_height_mm(n_neighbours: np.ndarray) -> np.ndarray:
    """How much taller (mm) than the mean of its ``n_neighbours`` (1 or 2) neighbours on the
    same radiograph a vertebra may read from measurement error alone: ``AGREEMENT_Z`` SDs of
    (one reading − the mean of n readings)."""
    n = np.asarray(n_neighbours, dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        return AGREEMENT_Z * HEIGHT_READING_SD_MM * np.sqrt(1.0 + 1.0 / n)


#: How far apart the native bone of one vertebra may read on the pre- and post-operative CT.
HU_AGREEMENT = HU_CONTRAST_SHIFT + AGREEMENT_Z * HU_SERIES_DIFFERENCE_SD


@dataclass(frozen=True)
class MeasurementError:
    """A tolerance a rule between values allows, with its source (rendered in the data dictionary)."""

    name: str
    value: float
    unit: str
    meaning: str
    source: str


#: The measurement errors the rules allow for, with their sources.
MEASUREMENT_ERRORS: tuple[MeasurementError, ...] = (
    MeasurementError("HEIGHT_READING_SD_MM", HEIGHT_READING_SD_MM, "mm",
                     "SD of one vertebral height read on a lateral radiograph",
                     "Alanay A et al. Eur Spine J 2007;16(12):2126-32 (doi:10.1007/s00586-007-0474-z): 95 % "
                     "intra-observer agreement ±4.5 to ±6.5 mm; ±4.5 mm = 1.96·√2·SD"),
    MeasurementError("RADIOGRAPH_SCALE_SHARE", RADIOGRAPH_SCALE_SHARE, "share",
                     "difference in magnification between two radiographs (added to the reading error)",
                     "project assumption"),
    MeasurementError("AGREEMENT_Z", AGREEMENT_Z, "SD",
                     "two measurements disagree when further apart than this many SDs of their difference",
                     "99 % two-sided (project choice)"),
    MeasurementError("HU_SERIES_DIFFERENCE_SD", HU_SERIES_DIFFERENCE_SD, "HU",
                     "SD of the difference of one vertebra's trabecular HU read on two CT series",
                     "Pickhardt PJ et al. Osteoporos Int 2016;27(1):147-52 (157 adults, L1)"),
    MeasurementError("HU_CONTRAST_SHIFT", HU_CONTRAST_SHIFT, "HU",
                     "mean rise of trabecular HU with intravenous contrast", "Pickhardt 2016, as above"),
    MeasurementError("DXA_MANUFACTURER_DIFFERENCE_G_CM2", DXA_MANUFACTURER_DIFFERENCE_G_CM2, "g/cm²",
                     "BMD of the same women on Hologic vs GE Lunar scanners",
                     "Eur J Radiol 2007;62(3):423-6 (PMID 17289322): L2-L4 0.950 vs 1.068 g/cm²"),
    MeasurementError("DXA_LEAST_SIGNIFICANT_CHANGE_G_CM2", DXA_LEAST_SIGNIFICANT_CHANGE_G_CM2, "g/cm²",
                     "least significant change of DXA BMD (2.77 × precision error, precision 1-2 %)",
                     "ISCD precision assessment (LSC = 2.77 × precision error); Wilson & Smith, Hologic white "
                     "paper (in-vivo CV 1.1-2.3 %)"),
    MeasurementError("CT_VOLUME_SLACK_SHARE", CT_VOLUME_SLACK_SHARE, "share",
                     "cement volume on CT above the injected volume (+ CT_VOLUME_SLACK_ML = 0.2 mL)",
                     "project assumption (partial volume at the cement's edge)"),
    MeasurementError("PVP_MAX_RESTORATION_PCT", PVP_MAX_RESTORATION_PCT, "points",
                     "most compression rate a vertebroplasty restores",
                     "Xiong 2021: 4.44 ± 5.18 points, +7.2-12.6 with a cleft (99th percentile ≈ 30)"),
)


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


class CellProblem(NamedTuple):
    """A refused cell: its position in the column, the message, and the rule (``COLUMN_RULES``)."""

    position: int
    message: str
    rule: str


#: The rules ``column_problems`` applies, by name (every one an error: the value cannot be used).
COLUMN_RULES: dict[str, str] = {
    "unreadable": "the cell cannot be read as the column's type (a number, a date from 1900, 0/1)",
    "required": "a required value is missing",
    "allowed_values": "the value is not one of the column's allowed values",
    "binary": "a 0/1 flag holds another number",
    "range": "the number is outside the column's allowed range (with a unit hint where one fits)",
    "text_length": f"text longer than {MAX_TEXT_CHARS} characters",
    "future_date": f"a date after today (+{FUTURE_SLACK_DAYS} day for time zones)",
}


def column_problems(raw: np.ndarray | pd.Series, values: np.ndarray, unreadable: np.ndarray, spec: ColumnSpec,
                    required: bool) -> list[CellProblem]:
    """Every refused cell of one column (``CellProblem``: position, message, rule), in
    position order. All are errors.

    ``raw``: the cells as received; ``values`` / ``unreadable``: ``coerce_array(raw, kind)``;
    ``required``: a missing value is refused (not-nullable columns of tables; required
    record fields). The loops visit only offending cells.
    """
    missing = _absent(values) & ~unreadable
    present = ~missing & ~unreadable
    problems: list[CellProblem] = []
    for i in np.flatnonzero(unreadable):
        cell = raw.iat[i] if isinstance(raw, pd.Series) else raw[i]
        problems.append(CellProblem(int(i), unreadable_text(cell, spec.kind), "unreadable"))
    if required:
        problems.extend(CellProblem(int(i), "value missing (required)", "required") for i in np.flatnonzero(missing))
    if spec.allowed:
        bad = present & ~np.isin(values, np.array(spec.allowed, dtype=object))
        problems.extend(CellProblem(int(i), f"{values[i]!r} is not allowed (must be one of: {spec.range_text})",
                                    "allowed_values") for i in np.flatnonzero(bad))
    elif spec.kind == "binary":
        bad = present & (values != 0) & (values != 1)
        problems.extend(CellProblem(int(i), f"{float(values[i]):g} is not 0 or 1", "binary") for i in np.flatnonzero(bad))
    elif spec.kind in ("int", "float") and (spec.min is not None or spec.max is not None):
        lo = -np.inf if spec.min is None else spec.min
        hi = np.inf if spec.max is None else spec.max
        with np.errstate(invalid="ignore"):
            bad = present & ((values < lo) | (values > hi))
        for i in np.flatnonzero(bad):
            v = float(values[i])
            hint = spec.hint_for(v)
            problems.append(CellProblem(int(i), f"{v:g} {spec.unit} is outside the allowed range {allowed_text(spec)}"
                                        .replace("  ", " ") + (f" ({hint})" if hint else ""), "range"))
    elif spec.kind in ("id", "str", "category"):
        # The longest text first (one C-level pass): the per-cell search runs only if too long.
        longest = max(map(len, values[present]), default=0)
        long = (np.fromiter((v is not None and len(v) > MAX_TEXT_CHARS for v in values), dtype=bool, count=len(values))
                if longest > MAX_TEXT_CHARS else np.zeros(len(values), dtype=bool))
        problems.extend(CellProblem(int(i), f"text longer than {MAX_TEXT_CHARS} characters", "text_length")
                        for i in np.flatnonzero(long))
    elif spec.kind == "date" and present.any():  # (today's date costs ~50 µs: not for an empty column)
        latest = latest_date().to_datetime64()
        bad = present & (values > latest)
        problems.extend(CellProblem(int(i), f"{pd.Timestamp(values[i]):%Y-%m-%d} is in the future (today is {today():%Y-%m-%d})",
                                    "future_date") for i in np.flatnonzero(bad))
    problems.sort(key=lambda p: p.position)
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
    """A value questioned for what it says next to the procedure's other values.

    ``severity``: ``ERROR`` (refused) or ``WARNING`` (used, reported); ``rule``: the name
    of the ``PLAUSIBILITY_RULES`` entry that found it (set by ``plausibility_problems``).
    """

    position: int
    field: str  # flat record name of the field named, e.g. 'dxa_t_score'
    message: str
    allowed: str
    severity: Severity = ERROR
    rule: str = ""


Columns = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Rule:
    """One rule between the fields of a procedure: ``check(columns, n)`` lists what it
    finds; ``severities``: what it can report (for the data dictionary); the check's
    docstring says the rule in one sentence (rendered in the data dictionary)."""

    name: str
    check: Callable[[Columns, int], list[Implausible]]
    severities: tuple[Severity, ...]

    @property
    def description(self) -> str:
        """The check's docstring in one line, without a leading "Error:"/"Warning:" (the severity says it)."""
        text = " ".join((self.check.__doc__ or "").split())
        for severity in ("Error: ", "Warning: "):
            if text.startswith(severity):
                text = text[len(severity)].upper() + text[len(severity) + 1:]
        return text

    def __call__(self, cols: Columns, n: int) -> list[Implausible]:
        return [replace(p, rule=self.name) for p in self.check(cols, n)]


def _num(cols: Columns, name: str, n: int) -> np.ndarray:
    v = cols.get(name)
    return np.full(n, np.nan) if v is None else np.asarray(v, dtype="float64")


def _text(cols: Columns, name: str, n: int) -> np.ndarray:
    v = cols.get(name)
    return np.full(n, None, dtype=object) if v is None else np.asarray(v, dtype=object)


def _dates(cols: Columns, name: str, n: int) -> np.ndarray:
    v = cols.get(name)
    return np.full(n, np.datetime64("NaT", "ns"), dtype="datetime64[ns]") if v is None else np.asarray(v, dtype="datetime64[ns]")


def _pain_onset_after_surgery(cols: Columns, n: int) -> list[Implausible]:
    """Error: back pain from the index fracture begins on or before the surgery (`pain_onset_date` ≤ `surgery_date`)."""
    surgery, onset = _dates(cols, "surgery_date", n), _dates(cols, "pain_onset_date", n)
    late = ~np.isnat(onset) & ~np.isnat(surgery) & (onset > surgery)
    return [Implausible(int(i), "pain_onset_date",
                        f"pain onset {pd.Timestamp(onset[i]):%Y-%m-%d} is after the surgery ({pd.Timestamp(surgery[i]):%Y-%m-%d})",
                        "on or before procedure.surgery_date")
            for i in np.flatnonzero(late)]


def _ct_volume_limit(ml: np.ndarray) -> np.ndarray:
    """The most a CT volume measurement may read for a true volume ``ml`` (CT_VOLUME_SLACK_*)."""
    return ml * (1 + CT_VOLUME_SLACK_SHARE) + CT_VOLUME_SLACK_ML


def _cement_sides(cols: Columns, n: int) -> list[Implausible]:
    """Error: the fuller hemivertebra (post-operative CT) holds no more cement than was injected at the level (`cement_larger_side_volume_ml` ≤ `cement_volume_ml`), nor more than the whole vertebral body (pre-operative `vertebral_body_volume_ml`), beyond CT's partial-volume slack (10 % + 0.2 mL)."""
    larger, total = _num(cols, "cement_larger_side_volume_ml_postop", n), _num(cols, "cement_volume_ml", n)
    body = _num(cols, "vertebral_body_volume_ml_preop", n)
    out = []
    with np.errstate(invalid="ignore"):
        for i in np.flatnonzero(larger > _ct_volume_limit(total)):
            out.append(Implausible(int(i), "cement_larger_side_volume_ml_postop",
                                   f"the larger side holds {larger[i]:g} mL, more than the {total[i]:g} mL of cement "
                                   "injected at the level (procedure.cement_volume_ml)",
                                   "at most procedure.cement_volume_ml (+10 % + 0.2 mL for CT)"))
        for i in np.flatnonzero(larger > _ct_volume_limit(body)):
            out.append(Implausible(int(i), "cement_larger_side_volume_ml_postop",
                                   f"the larger side holds {larger[i]:g} mL, more than the whole vertebral body "
                                   f"({body[i]:g} mL, imaging.preop.vertebral_body_volume_ml)",
                                   "at most imaging.preop.vertebral_body_volume_ml (+10 % + 0.2 mL for CT)"))
    return out


def bmd_range_for_t_score(t_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The areal BMD (g/cm²) coherent with each T-score, as (lowest, highest): see
    ``BMD_REFERENCE_MEAN_G_CM2`` and ``BMD_T_SCORE_SLACK_G_CM2``."""
    t = np.asarray(t_score, dtype="float64")
    corners = np.stack([m + t * s for m in BMD_REFERENCE_MEAN_G_CM2 for s in BMD_REFERENCE_SD_G_CM2])
    return corners.min(axis=0) - BMD_T_SCORE_SLACK_G_CM2, corners.max(axis=0) + BMD_T_SCORE_SLACK_G_CM2


def _bmd_t_score(cols: Columns, n: int) -> list[Implausible]:
    """Error: `dxa_t_score` is coherent with `dxa_bmd_g_cm2`: BMD = mean + T × SD for a young-adult reference (means 0.85–1.20 g/cm², SDs 0.11–0.14 g/cm²), ± 0.15 g/cm² for other manufacturers' references (0.12) and DXA's least significant change (0.03); e.g. BMD 1.8 with T −7 is refused. Outside that band at least one of the two is not what its column says (another site, another field), and which one cannot be told."""
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
    """Warning: a neighbour above 600 HU holds cement: before surgery that needs an earlier fracture (`prior_vertebral_fractures_n` ≥ 1), after it an earlier fracture or a neighbour treated in the same session (`n_levels_treated` ≥ 2). A warning, not an error: the reading is real (an augmentation the export did not record, or sclerotic bone), and the features read the other neighbour when this one holds cement."""
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
                                f"up to {NATIVE_BONE_MAX_HU:g} HU for a native neighbour", WARNING)
                    for i in np.flatnonzero(bad)]
    return out


_RECORD_TIMEPOINTS = ("preop", "postop")
_TIMEPOINTS = ("preop", "postop", "followup")
_HEIGHTS = ("vertebral_height_mm", "upper_adjacent_height_mm", "lower_adjacent_height_mm")
_SAID = {"preop": "pre-operative", "postop": "post-operative", "followup": "follow-up",
         "vertebral_height_mm": "height", "upper_adjacent_height_mm": "upper adjacent height",
         "lower_adjacent_height_mm": "lower adjacent height"}


def _exam_in_cm(cols: Columns, n: int, tp: str) -> np.ndarray:
    """Per procedure: every height of the ``tp`` examination (at least two) is below
    ``CM_LIKE_HEIGHT_MM``, i.e. the examination was written in cm."""
    heights = np.stack([_num(cols, f"{h}_{tp}", n) for h in _HEIGHTS])
    known = ~np.isnan(heights)
    with np.errstate(invalid="ignore"):
        return np.where(known, heights < CM_LIKE_HEIGHT_MM, True).all(axis=0) & (known.sum(axis=0) >= 2)


def _heights_in_cm(cols: Columns, n: int) -> list[Implausible]:
    """Error: heights are in mm: an examination whose heights (at least two) are all below 6.5 mm was written in cm. A single low height (vertebra plana, near-complete collapse, down to 1 mm) is accepted."""
    out = []
    for tp in _TIMEPOINTS:
        names = [f"{h}_{tp}" for h in _HEIGHTS]
        if not any(name in cols for name in names):
            continue
        for i in np.flatnonzero(_exam_in_cm(cols, n, tp)):
            shown = ", ".join(f"{h:g}" for h in (_num(cols, name, n)[i] for name in names) if not np.isnan(h))
            out.append(Implausible(int(i), names[0],
                                   f"every height of this examination is below {CM_LIKE_HEIGHT_MM:g} mm ({shown}): "
                                   "vertebral heights are in mm; these look like cm (multiply by 10)",
                                   "heights in mm"))
    return out


def _compression_rate(cols: Columns, n: int) -> list[Implausible]:
    """Warning: the fractured vertebra is not taller than the mean of its neighbours on the same radiograph (compression rate ≤ 100 %) by more than measurement error (2.58 SD of one reading minus a mean of readings: 5.1 mm against two neighbours, 5.8 mm against one), before and after surgery, unless a neighbour may be fractured too: treated in the same session (`n_levels_treated` ≥ 2), an earlier fracture (`prior_vertebral_fractures_n` ≥ 1), or visibly collapsed (below 75 % of the other neighbour's height, or below 10 mm). A painful fracture with little or no height loss (oedema on MRI) is augmented too, so a compression rate slightly above 100 % is measurement error, not a mistake; beyond that it is implausible (an unrecorded fractured neighbour, heights in the wrong columns) but the value is used."""
    levels, prior = _num(cols, "n_levels_treated", n), _num(cols, "prior_vertebral_fractures_n", n)
    out = []
    for tp in _RECORD_TIMEPOINTS:
        h, u, lo = (_num(cols, f"{name}_{tp}", n) for name in _HEIGHTS)
        k = (~np.isnan(u)).astype(int) + (~np.isnan(lo)).astype(int)
        with np.errstate(invalid="ignore", divide="ignore"):
            reference = _neighbour_mean(cols, n, tp)
            rate = 100.0 * h / reference
            tolerance = excess_height_mm(k)
            collapsed_neighbour = ((np.fmin(u, lo) < COLLAPSED_NEIGHBOUR_RATIO * np.fmax(u, lo))
                                   | (np.fmin(u, lo) < COLLAPSED_NEIGHBOUR_MM))
            bad = (h > reference + tolerance) & ~(levels >= 2) & ~(prior >= 1) & ~collapsed_neighbour
        out += [Implausible(int(i), f"vertebral_height_mm_{tp}",
                            f"the fractured vertebra ({h[i]:g} mm) is {h[i] - reference[i]:.1f} mm taller than its "
                            f"neighbours (mean {reference[i]:g} mm) on the {_SAID[tp]} radiograph, more than the "
                            f"{tolerance[i]:.1f} mm measurement error allows: a compression rate of {rate[i]:.0f} % needs "
                            "a fractured neighbour, yet the session treats one level, the patient has no earlier fracture "
                            "and both neighbours are of similar height. If a neighbour is fractured, record the fracture "
                            "(patient.prior_vertebral_fractures_n) or leave its height empty (the other neighbour is then "
                            "the reference); else check that the heights are in the right columns",
                            "a compression rate up to 100 % + measurement error", WARNING)
                for i in np.flatnonzero(bad)]
    return out


def _cm_slip(small: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Where ``small`` looks like the height ``other`` (the same vertebra on another
    examination, in mm) written in cm: below ``CM_LIKE_HEIGHT_MM``, ``other`` at least
    ``COLLAPSED_NEIGHBOUR_MM``, and ``other / small`` within ``CM_SLIP_RATIO``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = other / small
        return ((small < CM_LIKE_HEIGHT_MM) & (other >= COLLAPSED_NEIGHBOUR_MM)
                & (ratio >= CM_SLIP_RATIO[0]) & (ratio <= CM_SLIP_RATIO[1]))


def _slip(i: int, field: str, small: float, other: float, other_tp: str, why: str) -> Implausible:
    name, tp = field.rsplit("_", 1)
    return Implausible(i, field, f"{_SAID[tp]} {_SAID[name]} {small:g} looks like cm: {10 * small:g} mm? "
                                 f"(the {_SAID[other_tp]} radiograph reads {other:g} mm; {why})",
                       "heights in mm")


def _treated_height_over_time(cols: Columns, n: int) -> list[Implausible]:
    """The treated vertebra's post-operative height is consistent with its pre-operative one and the technique. Error: one of the two is about ten times the other while that other is a normal height (≥ 10 mm): the small one was written in cm, named with its value in mm (no augmentation restores a vertebra tenfold, and cement does not flatten one). Warning: the post-operative height is lower than the pre-operative one by more than measurement error (2.58 SD of a difference of two readings + 5 % for the radiographs' scale), or a vertebroplasty (PVP) restored more than 30 points of compression rate (Xiong 2021: 4.4 ± 5.2 points, up to 12.6 more with a cleft; kyphoplasty restores more). Warnings, not errors: another projection, another level measured or a mislabelled technique can explain them, and neither height is known to be the wrong one; a tenfold ratio has one explanation, a unit, and names the value to fix."""
    h_pre, h_post = _num(cols, "vertebral_height_mm_preop", n), _num(cols, "vertebral_height_mm_postop", n)
    skip = _exam_in_cm(cols, n, "preop") | _exam_in_cm(cols, n, "postop")  # reported whole by _heights_in_cm
    out = []
    pre_cm, post_cm = _cm_slip(h_pre, h_post) & ~skip, _cm_slip(h_post, h_pre) & ~skip
    out += [_slip(int(i), "vertebral_height_mm_preop", h_pre[i], h_post[i], "postop",
                  "no augmentation restores a vertebra tenfold") for i in np.flatnonzero(pre_cm)]
    out += [_slip(int(i), "vertebral_height_mm_postop", h_post[i], h_pre[i], "preop",
                  "cement does not flatten a vertebra") for i in np.flatnonzero(post_cm)]
    usable = ~skip & ~pre_cm & ~post_cm
    tolerance = height_agreement_mm(h_pre, h_post)
    with np.errstate(invalid="ignore"):
        lower = usable & (h_post < h_pre - tolerance)
    out += [Implausible(int(i), "vertebral_height_mm_postop",
                        f"the treated vertebra is {h_pre[i] - h_post[i]:.1f} mm lower after surgery ({h_post[i]:g} mm) "
                        f"than before ({h_pre[i]:g} mm), more than the {tolerance[i]:.1f} mm two radiographs may differ "
                        "by: an augmentation does not lower a vertebra; check both heights are of the treated level",
                        "at least the pre-operative height − measurement error", WARNING)
            for i in np.flatnonzero(lower)]
    technique = _text(cols, "technique", n)
    ref_pre = _neighbour_mean(cols, n, "preop")
    ref_post = _neighbour_mean(cols, n, "postop")
    with np.errstate(invalid="ignore", divide="ignore"):
        restored = 100.0 * (h_post / ref_post - h_pre / ref_pre)
        too_much = usable & (technique == "PVP") & (restored > PVP_MAX_RESTORATION_PCT)
    out += [Implausible(int(i), "vertebral_height_mm_postop",
                        f"a vertebroplasty restored {restored[i]:.0f} points of compression rate ({h_pre[i]:g} → "
                        f"{h_post[i]:g} mm): more than the {PVP_MAX_RESTORATION_PCT:g} points vertebroplasty restores "
                        "(Xiong 2021); was it a kyphoplasty (procedure.technique), or are the heights of different levels?",
                        f"a restoration up to {PVP_MAX_RESTORATION_PCT:g} points after PVP", WARNING)
            for i in np.flatnonzero(too_much)]
    return out


def _neighbour_mean(cols: Columns, n: int, tp: str) -> np.ndarray:
    u, lo = _num(cols, f"upper_adjacent_height_mm_{tp}", n), _num(cols, f"lower_adjacent_height_mm_{tp}", n)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(lo), u, np.where(np.isnan(u), lo, (u + lo) / 2))


def _neighbour_heights_over_time(cols: Columns, n: int) -> list[Implausible]:
    """An untreated neighbour's height before and after surgery agrees within measurement error. Error: one reading is about ten times the other, the other a normal height (≥ 10 mm): the small one was written in cm, named with its value in mm (a neighbour cannot change tenfold in a day). Warning: the two differ by more than 2.58 SD of a difference of two readings + 5 % for the radiographs' scale (7 mm for a 24 mm vertebra; a neighbour treated in the same session may gain height). A warning, not an error: another projection or the wrong level measured explains it, and neither reading is known to be the wrong one."""
    levels = _num(cols, "n_levels_treated", n)
    skip = _exam_in_cm(cols, n, "preop") | _exam_in_cm(cols, n, "postop")
    out = []
    for side in ("upper", "lower"):
        name = f"{side}_adjacent_height_mm"
        pre, post = _num(cols, f"{name}_preop", n), _num(cols, f"{name}_postop", n)
        pre_cm, post_cm = _cm_slip(pre, post) & ~skip, _cm_slip(post, pre) & ~skip
        out += [_slip(int(i), f"{name}_preop", pre[i], post[i], "postop",
                      "an untreated neighbour cannot change tenfold in a day") for i in np.flatnonzero(pre_cm)]
        out += [_slip(int(i), f"{name}_postop", post[i], pre[i], "preop",
                      "an untreated neighbour cannot change tenfold in a day") for i in np.flatnonzero(post_cm)]
        tolerance = height_agreement_mm(pre, post)
        with np.errstate(invalid="ignore"):
            # A neighbour treated in the same session may be restored: only a loss questions it.
            apart = ~skip & ~pre_cm & ~post_cm & (np.abs(post - pre) > tolerance) & ~((levels >= 2) & (post > pre))
        out += [Implausible(int(i), f"{name}_postop",
                            f"the {side} adjacent vertebra measures {pre[i]:g} mm before and {post[i]:g} mm after "
                            f"surgery, {abs(post[i] - pre[i]):.1f} mm apart: more than the {tolerance[i]:.1f} mm two "
                            "radiographs may differ by; check that both are of the same vertebra",
                            "the pre-operative height ± measurement error", WARNING)
                for i in np.flatnonzero(apart)]
    return out


def _neighbour_hu_over_time(cols: Columns, n: int) -> list[Implausible]:
    """Warning: an untreated neighbour's trabecular HU on the pre- and post-operative CT (both native bone, below 600 HU) agree within 61 HU (the +11.2 HU contrast shift + 2.58 × 19.2 HU, the SD between two CT series of one vertebra; Pickhardt 2016). A warning, not an error: scanner, protocol and contrast legitimately move HU, and no other unit can be meant; a tenfold difference is named as a likely slipped decimal."""
    out = []
    for side in ("upper", "lower"):
        name = f"hu_{side}_adjacent"
        pre, post = _num(cols, f"{name}_preop", n), _num(cols, f"{name}_postop", n)
        with np.errstate(invalid="ignore", divide="ignore"):
            native = (pre <= NATIVE_BONE_MAX_HU) & (post <= NATIVE_BONE_MAX_HU)
            apart = native & (np.abs(post - pre) > HU_AGREEMENT)
            ratio = np.fmax(pre, post) / np.fmin(pre, post)
        for i in np.flatnonzero(apart):
            tenfold = CM_SLIP_RATIO[0] <= ratio[i] <= CM_SLIP_RATIO[1]
            out.append(Implausible(int(i), f"{name}_postop",
                                   f"the {side} adjacent vertebra reads {pre[i]:g} HU before and {post[i]:g} HU after "
                                   f"surgery, {abs(post[i] - pre[i]):g} HU apart: more than the {HU_AGREEMENT:.0f} HU two "
                                   "CT series of one vertebra differ by (contrast, tube voltage, region of interest)"
                                   + ("; one of them looks like a slipped decimal" if tenfold else
                                      "; check both are of the same vertebra"),
                                   "the pre-operative HU ± measurement error", WARNING))
    return out


#: Every rule between the fields of one procedure, in report order.
PLAUSIBILITY_RULES: tuple[Rule, ...] = (
    Rule("pain_onset_after_surgery", _pain_onset_after_surgery, (ERROR,)),
    Rule("cement_sides", _cement_sides, (ERROR,)),
    Rule("bmd_t_score", _bmd_t_score, (ERROR,)),
    Rule("cemented_neighbour_hu", _cemented_neighbour_hu, (WARNING,)),
    Rule("heights_in_cm", _heights_in_cm, (ERROR,)),
    Rule("compression_rate", _compression_rate, (WARNING,)),
    Rule("treated_height_over_time", _treated_height_over_time, (ERROR, WARNING)),
    Rule("neighbour_height_over_time", _neighbour_heights_over_time, (ERROR, WARNING)),
    Rule("neighbour_hu_over_time", _neighbour_hu_over_time, (WARNING,)),
)


def without(values: np.ndarray, positions) -> np.ndarray:
    """A copy of a typed column with the cells at ``positions`` made missing."""
    out = values.copy()
    positions = np.asarray(list(positions), dtype=int)
    if len(positions):
        out[positions] = np.nan if out.dtype.kind == "f" else np.datetime64("NaT", "ns") if out.dtype.kind == "M" else None
    return out


def plausibility_problems(cols: Columns, n: int) -> list[Implausible]:
    """Every implausible combination in ``n`` procedures given as typed columns by flat
    record name (numbers as float, dates as datetime64), errors and warnings, each with
    its rule's name. Absent fields are skipped.

    Give it only values that passed ``column_problems`` (refused cells made missing,
    ``without``): a value already refused is reported once, for itself, and both callers
    then judge the same combinations."""
    out: list[Implausible] = []
    for rule in PLAUSIBILITY_RULES:
        out.extend(rule(cols, n))
    return out
