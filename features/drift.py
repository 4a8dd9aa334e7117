"""Input drift: a training reference with no patient data, and how far new data moved from it.

``build_reference`` summarises every model input as the training data saw it, in a
JSON-serialisable dict stored with the model version:

- numeric inputs (contract kinds ``int``/``float``, computed continuous and count
  features): interior bin edges at the deciles of the training values (rounded to 4
  significant digits, duplicates dropped, so a discrete input such as
  ``prior_vertebral_fractures_n`` gets one bin per value), the share of present values in
  each bin, each bin's mean, and the overall mean and SD. The first and last bins are open
  (-inf, e1] and (ek, +inf), so no minimum or maximum is stored and values a new site has
  outside the training range still fall in a bin;
- categorical inputs (``category``, ``binary``; binary as levels "0"/"1"): the share of
  each level of the contract's allowed values;
- dates (``surgery_date``, ``pain_onset_date``) and free text (contract kind ``str``, none
  today): the share missing only (a date is close to an identifier, calendar time is not a
  model input, and free text may hold anything);
- every input: the share missing.

**No patient data.** Identifiers (``procedure_id``) are never read. Every numeric bin
holds at least ``min_bin_rows`` (default 10) training rows: a bin with fewer is merged with
its smaller neighbour until none is left, so an edge or a bin mean never describes fewer
than 10 patients. Categorical levels seen in fewer than ``min_bin_rows`` rows are pooled
into ``"(other)"`` (which also receives levels the reference never saw); if the pool
itself has fewer than ``min_bin_rows`` rows it is merged into the smallest level. An input
with fewer than ``min_bin_rows`` present values keeps only its missing share. What is
stored is counts of at least 10 (as shares of ``n_rows``), rounded decile edges and bin
means: aggregates, never a value per record.

``drift_table`` compares new records (a site's export, a week of requests) with the
reference, per input, on the reference's bins plus one bin for "missing":

- ``psi``: population stability index, sum (a - e) ln(a / e) over bins (shares a now,
  e in the reference), 0.5 added to every bin's count on both sides so an empty bin gives
  a finite value. Conventional reading (Siddiqi 2006, *Credit Risk Scorecards*, Wiley,
  ch. 8; also Yurdakul 2018, *Statistical properties of the population stability index*,
  Western Michigan Univ.): < 0.10 no meaningful shift, 0.10-0.25 moderate shift (watch),
  >= 0.25 major shift (act). PSI is the symmetrised Kullback-Leibler (Jeffreys)
  divergence, an effect size that does not grow with the number of rows.
- ``p_value``: G-test (log-likelihood ratio chi-square) of homogeneity of the reference's
  and the new counts over the same bins. Yurdakul (2018) shows PSI x n_ref n_new /
  (n_ref + n_new) is asymptotically chi-square with (bins - 1) df under no shift; the G
  statistic (2 n times the Kullback-Leibler divergence of each sample from the pooled
  shares) is the standard test of the same kind: the p-value says whether a PSI is beyond sampling
  noise for these sample sizes (with a few hundred rows a PSI of 0.1 can be noise; with
  100k rows a PSI of 0.01 is "significant" and irrelevant). Flags use PSI; the p-value
  qualifies them.
- ``wasserstein``: the earth mover's (Wasserstein-1) distance between the two binned
  distributions of present values, each bin's mass placed at the reference bin mean, in
  the input's own unit ("HU moved by about 20 HU"), so a clinician reads the size of a
  shift in the unit measured. Binning makes it a lower bound of the row-level distance
  (mass beyond the outer bins' means is not moved further). NaN for categories.
- ``missing_ref`` / ``missing_now`` and ``missing_shift``: True when the missing share
  moved by at least ``MISSING_SHIFT`` (5 percentage points, a project choice: from a 3 %
  baseline a 5-point rise alone gives PSI ~0.05, under the PSI flag, so missingness gets
  its own).

Inputs are ranked by PSI (1 = largest shift).

Why not evidently? We tried evidently 0.7.23, the current release (docs/monitoring.md has
the steps and figures). (1) It does not import with this project's pandas 3.1.1
(``ImportError: cannot import name 'infer_dtype_from_object'``); its metadata still
allows pandas 3. (2) In a throwaway environment with pandas 2, its ``DataDriftPreset``
works on two *row-level* DataFrames (it flagged HU shifted by -20 and not age), binning
the reference rows itself; it cannot start from a stored binned summary. Rebuilding
reference rows from our deciles (bin means repeated by count) made it flag HU drift
(normed Wasserstein 0.13 > its 0.1 threshold) on a sample with *no* shift, against 0.02
with the true rows; and keeping true training rows with each model version is what the
reference must not do. (3) It brings 28 packages the lock does not hold (a web server,
nltk, plotly < 6, telemetry) into the model's environment. Hence our own ~200 lines on scipy (G-test,
Wasserstein).

Pure: DataFrames and dicts in, DataFrames and dicts out; no I/O.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from features.catalog import FEATURES_BY_NAME
from features.coerce import coerce_array, unreadable_text
from features.records import RECORD_FIELDS

REFERENCE_FORMAT = "refracture-drift-reference/1"
#: PSI thresholds (Siddiqi 2006): below MODERATE stable, from MAJOR a major shift.
PSI_MODERATE = 0.10
PSI_MAJOR = 0.25
#: Absolute change of the missing share (fraction of rows) flagged as a missingness shift.
MISSING_SHIFT = 0.05
#: Smallest number of training rows behind any stored bin, level, edge or mean.
MIN_BIN_ROWS = 10
#: Label of the pooled rare / unseen categorical levels.
OTHER = "(other)"
#: Input kinds of which only the share missing is stored and compared.
PRESENCE_ONLY = ("date", "text")
#: Fixed Prometheus buckets (upper bounds) for a predicted risk, a probability in [0, 1].
PREDICTED_RISK_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_SIGNIFICANT = 4


# ---------------------------------------------------------------- reference

def _input_specs(records: pd.DataFrame, computed: pd.DataFrame | None) -> list[dict[str, Any]]:
    """The inputs to summarise: every record field but identifiers, then computed features."""
    specs = []
    for f in RECORD_FIELDS:
        kind = f.spec.kind
        if kind == "id":
            continue
        if f.flat_name not in records.columns:
            raise ValueError(f"records: column {f.flat_name!r} is missing (every record field is a model input)")
        group = {"int": "numeric", "float": "numeric", "date": "date", "str": "text"}.get(kind, "categorical")
        levels = list(f.spec.allowed) if f.spec.allowed else (["0", "1"] if kind == "binary" else None)
        specs.append({"name": f.flat_name, "kind": group, "source": "record", "contract_kind": kind,
                      "unit": f.spec.unit if group == "numeric" else "", "levels": levels})
    if computed is not None:
        if len(computed) != len(records):
            raise ValueError(f"computed: {len(computed)} rows, records: {len(records)}; they must describe the same rows")
        taken = {s["name"] for s in specs}
        for name in computed.columns:
            if name in taken:  # the raw field already describes it
                continue
            spec = FEATURES_BY_NAME.get(name)
            binary = spec is not None and spec.kind == "binary"
            specs.append({"name": name, "kind": "categorical" if binary else "numeric", "source": "feature",
                          "contract_kind": "binary" if binary else "float",
                          "unit": spec.unit if spec is not None and not binary else "",
                          "levels": ["0", "1"] if binary else None})
    return specs


def _read(column: pd.Series, contract_kind: str, name: str, table: str) -> np.ndarray:
    """A column as its contract type; unreadable cells are an error naming row and column."""
    values, bad = coerce_array(column, contract_kind)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{table}: row {i}, column {name!r}: "
                         f"{unreadable_text(column.iloc[i], contract_kind)} ({int(bad.sum())} such cells)")
    return values


def _present(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return ~np.isnan(values)
    if values.dtype.kind == "M":
        return ~np.isnat(values)
    return np.fromiter((v is not None for v in values), dtype=bool, count=len(values))


def _round(x: float) -> float:
    """``x`` to 4 significant digits: readable edges and Prometheus ``le`` labels, and an
    edge that is no patient's exact measurement."""
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(round(x, _SIGNIFICANT - 1 - int(math.floor(math.log10(abs(x))))))


def _bin_of(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Bin index of each value: 0 for (-inf, e1], i for (e_i, e_{i+1}], k for (e_k, +inf)."""
    return np.searchsorted(np.asarray(edges, dtype="float64"), values, side="left")


def _merge_small(edges: list[float], counts: np.ndarray, min_rows: int) -> list[float]:
    """Drop edges until every bin has ``min_rows`` rows: the smallest bin is merged with
    its smaller neighbour, repeatedly."""
    edges, counts = list(edges), list(counts)
    while len(counts) > 1 and min(counts) < min_rows:
        i = int(np.argmin(counts))
        if i == 0:
            j = 1
        elif i == len(counts) - 1:
            j = i - 1
        else:
            j = i - 1 if counts[i - 1] <= counts[i + 1] else i + 1
        lo = min(i, j)
        counts[lo] += counts[lo + 1]
        del counts[lo + 1]
        del edges[lo]  # the edge between bins lo and lo + 1
    return edges


def _numeric_summary(values: np.ndarray, quantiles: int, min_rows: int) -> dict[str, Any]:
    x = values[~np.isnan(values)]
    if len(x) < min_rows:
        return {"edges": [], "shares": [], "bin_means": [], "mean": None, "sd": None}
    probs = np.linspace(0, 1, quantiles + 1)[1:-1]
    edges = sorted({_round(float(q)) for q in np.quantile(x, probs)})
    counts = np.bincount(_bin_of(x, edges), minlength=len(edges) + 1)
    edges = _merge_small(edges, counts, min_rows)
    bins = _bin_of(x, edges)
    counts = np.bincount(bins, minlength=len(edges) + 1)
    means = np.bincount(bins, weights=x, minlength=len(edges) + 1) / counts
    return {"edges": edges, "shares": [float(c / len(x)) for c in counts],
            "bin_means": [_round(float(m)) for m in means],
            "mean": _round(float(x.mean())), "sd": _round(float(x.std(ddof=1))) if len(x) > 1 else 0.0}


def _as_levels(values: np.ndarray, contract_kind: str) -> np.ndarray:
    """Categorical cells as text levels ('0'/'1' for binary), None where missing."""
    if contract_kind == "binary":
        return np.array([None if np.isnan(v) else str(int(v)) for v in values], dtype=object)
    return values.astype(object)


def _categorical_summary(levels_seen: np.ndarray, allowed: list[str] | None, min_rows: int) -> dict[str, Any]:
    x = pd.Series(levels_seen[pd.notna(levels_seen)], dtype=object)
    if len(x) < min_rows:
        return {"levels": [], "shares": []}
    counts = x.value_counts()
    names = list(allowed) if allowed else sorted(counts.index)
    kept = {lvl: int(counts.get(lvl, 0)) for lvl in names if counts.get(lvl, 0) >= min_rows}
    other = int(len(x) - sum(kept.values()))
    if 0 < other < min_rows:  # a pool of fewer than min_rows rows is merged into the smallest level
        smallest = min(kept, key=kept.get)
        kept[smallest] += other
        other = 0
    levels = list(kept) + ([OTHER] if other else [])
    shares = [kept[lvl] / len(x) for lvl in kept] + ([other / len(x)] if other else [])
    return {"levels": levels, "shares": [float(s) for s in shares]}


def build_reference(records: pd.DataFrame, computed: pd.DataFrame | None = None, quantiles: int = 10,
                    min_bin_rows: int = MIN_BIN_ROWS) -> dict[str, Any]:
    """Summary of every model input in the training data, safe to store with a model.

    ``records``: flat records, one row per treated level, a column per
    ``features.records.RECORD_FIELDS`` field (``tables_to_records`` output, or CSV/JSON
    values: cells are read as their contract type). ``computed``: optional derived features
    of the same rows (e.g. ``features.assemble`` output); columns named like a record field
    are skipped. ``quantiles``: number of quantile bins before merging (10 = deciles).
    ``min_bin_rows``: fewest training rows behind any stored bin or level.

    Returns a JSON-serialisable dict: ``format``, ``n_rows``, ``quantiles``,
    ``min_bin_rows`` and ``inputs`` (name -> ``kind`` numeric/categorical/date, ``source``
    record/feature, ``unit``, ``missing_share``, and ``edges``/``shares``/``bin_means``/
    ``mean``/``sd`` or ``levels``/``shares``; shares are over present values). See the
    module docstring for what is and is not stored.
    """
    if len(records) == 0:
        raise ValueError("records: no rows; a reference needs the training data")
    if quantiles < 2 or min_bin_rows < 1:
        raise ValueError(f"quantiles must be >= 2 and min_bin_rows >= 1, got {quantiles} and {min_bin_rows}")
    records = records.reset_index(drop=True)
    computed = None if computed is None else computed.reset_index(drop=True)
    out: dict[str, Any] = {"format": REFERENCE_FORMAT, "n_rows": int(len(records)), "quantiles": int(quantiles),
                           "min_bin_rows": int(min_bin_rows), "inputs": {}}
    for spec in _input_specs(records, computed):
        frame, table = (records, "records") if spec["source"] == "record" else (computed, "computed")
        values = _read(frame[spec["name"]], spec["contract_kind"], spec["name"], table)
        entry: dict[str, Any] = {"kind": spec["kind"], "source": spec["source"], "contract_kind": spec["contract_kind"],
                                 "unit": spec["unit"], "missing_share": float(1 - _present(values).mean())}
        if spec["kind"] == "numeric":
            entry.update(_numeric_summary(values, quantiles, min_bin_rows))
        elif spec["kind"] == "categorical":
            entry.update(_categorical_summary(_as_levels(values, spec["contract_kind"]), spec["levels"], min_bin_rows))
        out["inputs"][spec["name"]] = entry
    return out


# ---------------------------------------------------------------- comparison

def _check_reference(reference: dict[str, Any]) -> None:
    if not isinstance(reference, dict) or reference.get("format") != REFERENCE_FORMAT:
        found = reference.get("format") if isinstance(reference, dict) else type(reference).__name__
        raise ValueError(f"reference: field 'format' is {found!r}, expected {REFERENCE_FORMAT!r} (build it with build_reference)")
    for name, entry in reference["inputs"].items():
        if entry.get("kind") == "numeric" and len(entry["shares"]) not in (0, len(entry["edges"]) + 1):
            raise ValueError(f"reference: inputs.{name}: {len(entry['edges'])} edges but {len(entry['shares'])} shares")


def _counts_now(entry: dict[str, Any], values: np.ndarray) -> np.ndarray:
    """Counts of the new values in the reference's bins (present values only)."""
    if entry["kind"] == "numeric":
        x = values[~np.isnan(values)]
        return np.bincount(_bin_of(x, entry["edges"]), minlength=len(entry["edges"]) + 1).astype("float64")
    levels = _as_levels(values, entry["contract_kind"])
    x = levels[pd.notna(levels)]
    index = {lvl: i for i, lvl in enumerate(entry["levels"])}
    other = index.get(OTHER)
    counts = np.zeros(len(entry["levels"]))
    unseen = 0
    for lvl, c in pd.Series(x, dtype=object).value_counts().items():
        if lvl in index:
            counts[index[lvl]] += c
        elif other is not None:
            counts[other] += c
        else:
            unseen += c
    # A level the reference never saw and has no pool for: its own bin (reference share 0).
    return np.r_[counts, unseen] if unseen else counts


def psi(expected: np.ndarray, actual: np.ndarray, pseudo_count: float = 0.5) -> float:
    """Population stability index between two vectors of counts over the same bins.

    ``pseudo_count`` is added to every bin of both so that empty bins give a finite value.
    Returns sum (a - e) ln(a / e) over bins, a and e the smoothed shares (0 = identical).
    """
    e = np.asarray(expected, dtype="float64") + pseudo_count
    a = np.asarray(actual, dtype="float64") + pseudo_count
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def _g_test(expected: np.ndarray, actual: np.ndarray) -> float:
    table = np.vstack([expected, actual])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return float("nan")
    return float(stats.chi2_contingency(table, lambda_="log-likelihood", correction=False)[1])


def status_of(psi_value: float) -> str:
    """'stable', 'moderate shift' or 'major shift' by the PSI thresholds."""
    if not np.isfinite(psi_value):
        return "not assessed"
    return "major shift" if psi_value >= PSI_MAJOR else "moderate shift" if psi_value >= PSI_MODERATE else "stable"


def drift_table(reference: dict[str, Any], records: pd.DataFrame, computed: pd.DataFrame | None = None) -> pd.DataFrame:
    """How far ``records`` (same columns as for ``build_reference``) moved from ``reference``.

    Returns one row per input of the reference, ordered by ``rank`` (1 = largest PSI), with
    ``input``, ``kind``, ``unit``, ``n_ref``, ``n_now`` (rows), ``psi`` (over the reference
    bins plus a missing bin), ``status`` (``status_of(psi)``), ``p_value`` (G-test of
    homogeneity on the same bins), ``wasserstein`` (numeric only, in ``unit``),
    ``mean_ref``/``mean_now`` (numeric only), ``missing_ref``/``missing_now`` (fractions of
    rows), ``missing_shift`` (bool) and ``rank``. Dates and text get missingness only.
    """
    _check_reference(reference)
    if len(records) == 0:
        raise ValueError("records: no rows to compare with the reference")
    records = records.reset_index(drop=True)
    computed = None if computed is None else computed.reset_index(drop=True)
    n_ref, n_now = reference["n_rows"], len(records)
    rows = []
    for name, entry in reference["inputs"].items():
        frame, table = (records, "records") if entry["source"] == "record" else (computed, "computed")
        if frame is None or name not in frame.columns:
            raise ValueError(f"{table}: column {name!r} is missing (the reference has it)")
        values = _read(frame[name], entry["contract_kind"], name, table)
        present = _present(values)
        miss_ref, miss_now = entry["missing_share"], float(1 - present.mean())
        # Counts on the reference bins plus the missing bin; reference counts from its shares.
        ref_present, n_missing = n_ref * (1 - miss_ref), float(n_now - present.sum())
        if entry["kind"] in PRESENCE_ONLY or not entry.get("shares"):
            # Dates, text, and inputs too rarely present in training to have bins: missingness only.
            ref_counts = np.array([ref_present, n_ref * miss_ref])
            now_counts = np.array([float(present.sum()), n_missing])
        else:
            ref_counts = np.r_[np.asarray(entry["shares"], dtype="float64") * ref_present, n_ref * miss_ref]
            now_counts = np.r_[_counts_now(entry, values), n_missing]
            if len(now_counts) > len(ref_counts):  # an unseen level: reference share 0, before the missing bin
                ref_counts = np.r_[ref_counts[:-1], 0.0, ref_counts[-1]]
        row = {"input": name, "kind": entry["kind"], "unit": entry["unit"], "n_ref": n_ref, "n_now": n_now,
               "psi": psi(ref_counts, now_counts), "p_value": _g_test(ref_counts, now_counts),
               "wasserstein": np.nan, "mean_ref": np.nan, "mean_now": np.nan,
               "missing_ref": miss_ref, "missing_now": miss_now,
               "missing_shift": bool(abs(miss_now - miss_ref) >= MISSING_SHIFT)}
        if entry["kind"] == "numeric" and entry["shares"] and now_counts[:-1].sum() > 0:
            row["wasserstein"] = float(stats.wasserstein_distance(entry["bin_means"], entry["bin_means"],
                                                                  entry["shares"], now_counts[:-1]))
            row["mean_ref"] = entry["mean"]
            row["mean_now"] = float(np.nanmean(values))
        rows.append(row)
    out = pd.DataFrame(rows)
    out["status"] = [status_of(v) for v in out["psi"]]
    out = out.sort_values(["psi", "input"], ascending=[False, True], kind="mergesort").reset_index(drop=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out


def current_shares(reference: dict[str, Any], name: str, records: pd.DataFrame,
                   computed: pd.DataFrame | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(bin labels, reference shares, new shares) of one input's present values on the
    reference bins, for plots. Labels read '≤ e1', 'e1–e2', '> ek' or the level."""
    entry = reference["inputs"][name]
    if entry["kind"] in PRESENCE_ONLY or not entry.get("shares"):
        return [], np.zeros(0), np.zeros(0)  # nothing but the missing share to show
    frame = records if entry["source"] == "record" else computed
    values = _read(frame.reset_index(drop=True)[name], entry["contract_kind"], name,
                   "records" if entry["source"] == "record" else "computed")
    if entry["kind"] == "numeric":
        e = entry["edges"]
        labels = ([f"≤ {e[0]:g}"] + [f"{a:g}–{b:g}" for a, b in zip(e[:-1], e[1:])] + [f"> {e[-1]:g}"]) if e else ["all values"]
    else:
        labels = list(entry["levels"])
    counts = _counts_now(entry, values)
    ref = np.asarray(entry["shares"], dtype="float64")
    if len(counts) > len(ref):
        labels.append("(not in training)")
        ref = np.r_[ref, 0.0]
    now = counts / counts.sum() if counts.sum() else counts
    return labels, ref, now


# ---------------------------------------------------------------- Prometheus

def histogram_buckets(reference: dict[str, Any]) -> dict[str, list[float]]:
    """Prometheus histogram bucket upper bounds (``le``) per numeric input, from the
    reference's decile edges (Prometheus adds +Inf), and ``predicted_risk`` with the fixed
    ``PREDICTED_RISK_BUCKETS``. Inputs whose reference has no bins are left out (their
    missing counter still applies). Bounds are aggregates of >= min_bin_rows training
    rows, never a record's value."""
    _check_reference(reference)
    out = {name: [float(e) for e in entry["edges"]] for name, entry in reference["inputs"].items()
           if entry["kind"] == "numeric" and entry["edges"]}
    out["predicted_risk"] = list(PREDICTED_RISK_BUCKETS)
    return out


def category_levels(reference: dict[str, Any]) -> dict[str, list[str]]:
    """Per categorical input, the ``level`` label values a ``refracture_input_level_total``
    counter may take: the reference's levels and ``OTHER`` (for any value outside them), so
    the label set is bounded and never holds free text."""
    _check_reference(reference)
    return {name: list(dict.fromkeys([*entry["levels"], OTHER])) for name, entry in reference["inputs"].items()
            if entry["kind"] == "categorical"}


def reference_cumulative_shares(reference: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per numeric input, the reference's cumulative share of present values at each
    bucket bound, keyed by the ``le`` label text as Prometheus writes it (``"+Inf"`` = 1):
    the values of a ``refracture_input_reference_share{input, le}`` gauge that alert rules
    compare with the live histogram (docs/monitoring.md)."""
    out: dict[str, dict[str, float]] = {}
    for name, bounds in histogram_buckets(reference).items():
        if name == "predicted_risk":
            continue
        cum = np.cumsum(reference["inputs"][name]["shares"])
        out[name] = {**{_le(b): float(c) for b, c in zip(bounds, cum[:-1])}, "+Inf": 1.0}
    return out


def _le(bound: float) -> str:
    """A bound as Prometheus' Python client writes the ``le`` label (``floatToGoString``)."""
    return repr(float(bound)) if math.isfinite(bound) else "+Inf"
