"""Training data: read the export once, then per outcome the follow-up, the crude labels at
every horizon and their censoring weights, the held-out split and the folds.

Every procedure with a follow-up time is used: its time to the event, to death (a
competing event) or to the last contact, and its status (``features.labels``). For each
horizon t the binary crude label is 1 if the event came by t, 0 if the patient died first
or was followed to t without it, and unknown if follow-up ended earlier; unknown labels
weigh 0 and known ones 1 / G(min(T, t)-), with G the Kaplan-Meier of remaining under
follow-up fitted on the training part (``training.competing_risks``). The weighted labels
estimate the cumulative incidence without the upward bias of dropping early-censored,
event-free patients (the old complete-case rule).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.ascertainment import Ascertainment, checked, followup_notes
from features.assemble import build_training_set
from features.catalog import FEATURES_BY_NAME, feature_names
from features.labels import EVENT, horizon_days
from features.levels import is_thoracolumbar
from features.exclusion import CheckedExport, ExclusionReport, checked_export
from features.records import tables_to_records
from features.validate import check_raw
from features.io import read_export_metadata, read_raw
from training.censoring import censoring_model
from training.competing_risks import crude_label, ipcw_weights
from training.config import TrainConfig
from modelstore.estimand import horizon_column
from training.evaluation import age_band
from training.provenance import data_fingerprint, git_commit, read_profile
from training.split import cv_folds, train_test_split_grouped

logger = logging.getLogger(__name__)


class TrainingRefused(RuntimeError):
    """The data cannot support training as asked (too few events, wrong feature set...)."""


@dataclass
class Prepared:
    """Everything read from the export once, shared by all outcomes."""

    tables: dict[str, pd.DataFrame]
    training_set: pd.DataFrame
    records: pd.DataFrame
    subgroups: pd.DataFrame
    fingerprint: str
    truth: pd.DataFrame | None
    profile: str
    git_commit: str
    validation: ExclusionReport | None = None
    ascertainment: Ascertainment = Ascertainment()
    followup_notes: tuple[str, ...] = ()


def subgroup_frame(records: pd.DataFrame) -> pd.DataFrame:
    """Sex, age band, region (thoracolumbar T10-L2 vs other) and technique per procedure."""
    out = pd.DataFrame(index=records["procedure_id"].astype(str).to_numpy())
    out["sex"] = records["sex"].to_numpy()
    out["age_band"] = age_band(pd.Series(records["age_years"].to_numpy(dtype="float64"))).to_numpy()
    tl = is_thoracolumbar(pd.Series(records["level"].to_numpy()))
    out["region"] = np.where(np.asarray(tl, dtype=bool), "thoracolumbar (T10-L2)", "other")
    out["technique"] = records["technique"].to_numpy()
    return out


def check_feature_set(tables: dict[str, pd.DataFrame], training_set: pd.DataFrame, feature_set: str) -> None:
    """Refuse a post-operative feature set when the export has no post-operative data."""
    if feature_set != "postop":
        return
    imaging = tables["imaging"]
    n_post = int((imaging["timepoint"] == "postop").sum())
    post_features = [n for n in training_set.columns if n in FEATURES_BY_NAME and FEATURES_BY_NAME[n].timing == "postop"]
    empty = [n for n in post_features if training_set[n].isna().all()]
    cement_empty = training_set["cement_volume_ml"].isna().all() if "cement_volume_ml" in training_set else True
    if n_post == 0 or len(empty) == len(post_features) or cement_empty:
        raise TrainingRefused(
            f"feature set 'postop' does not match this export: {n_post} imaging rows with timepoint 'postop'; "
            f"{len(empty)} of {len(post_features)} post-operative features are empty in every row"
            + (" (cement volume is empty too)" if cement_empty else "")
            + ". Use --feature-set preop, or export the immediate post-operative imaging and operative record.")


def prepare(cfg: TrainConfig, export: CheckedExport | None = None) -> Prepared:
    """Read, validate and build features once. Raises RawDataError / TrainingRefused.

    ``export``: the export of ``cfg.raw_dir`` already read and checked under the policy
    (the CLI does it, to print what `refracture validate` prints); else it is read here, with
    ``cfg.exclude_invalid``. The exclusion report goes with the runs (``validation``).
    The labels follow the export's ``export.yaml`` (``features.ascertainment``; its default
    when absent); what a reader must know about them is logged as warnings and kept in
    ``followup_notes``."""
    if export is None:
        export = checked_export(check_raw(read_raw(cfg.raw_dir)), cfg.exclude_invalid)
    tables = export.tables
    asc = checked(read_export_metadata(cfg.raw_dir), tables)
    notes = tuple(followup_notes(asc, tables))
    for note in notes:
        logger.warning("%s", note)
    ts = build_training_set(tables, cfg.feature_set, horizon_months=cfg.horizon_months, ascertainment=asc)
    ts.index = ts.index.astype(str)
    check_feature_set(tables, ts, cfg.feature_set)
    records = tables_to_records(tables)
    truth = None
    truth_path = Path(cfg.raw_dir) / "truth.parquet"
    if truth_path.exists():
        truth = pd.read_parquet(truth_path)
        truth = truth.set_index(truth["procedure_id"].astype(str))
    return Prepared(tables, ts, records, subgroup_frame(records), data_fingerprint(Path(cfg.raw_dir)),
                    truth, read_profile(Path(cfg.raw_dir)), git_commit(), export.report, asc, notes)


def horizon_targets(time_days: np.ndarray, status: np.ndarray, horizons_months, G) -> tuple[np.ndarray, np.ndarray]:
    """(labels, weights), each (n, K): the crude label at each horizon (NaN unknown) and its
    IPCW weight under the censoring survival ``G`` (0 where unknown)."""
    labels = np.column_stack([crude_label(time_days, status, horizon_days(h)) for h in horizons_months])
    weights = np.column_stack([ipcw_weights(time_days, status, horizon_days(h), G=G) for h in horizons_months])
    return labels, weights


@dataclass
class OutcomeData:
    """One outcome's rows (every procedure with follow-up), split and weighted.

    ``X`` features; ``time_days``/``status`` (0 censored, 1 event, 2 death first);
    ``train``/``test`` positions (grouped by patient, stratified by the headline status);
    ``folds``: positions *within* ``train``; ``G``: censoring survival fitted on the training part
    (``training.censoring``: Kaplan-Meier, or given the patient's covariates, for every row);
    ``labels``/``weights`` (n, K) at ``horizons_months``; ``k``: the headline's column;
    ``feature_set``: the set ``X`` holds (``TrainConfig.feature_set_for``). For ``death``
    the status is 1 death, 0 censored alive (no competing event).
    """

    outcome: str
    X: pd.DataFrame
    time_days: np.ndarray
    status: np.ndarray
    patient_ids: np.ndarray
    train: np.ndarray
    test: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    G: object
    horizons_months: tuple[float, ...]
    labels: np.ndarray
    weights: np.ndarray
    k: int
    feature_set: str = "postop"

    @property
    def ids(self) -> pd.Index:
        return self.X.index

    def headline(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(crude labels with unknown as 0, IPCW weights) at the headline horizon for ``rows``."""
        return np.nan_to_num(self.labels[rows, self.k]), self.weights[rows, self.k]

    def counts(self, rows: np.ndarray | None = None) -> dict[str, int]:
        """Events, deaths first and censored before the headline, among ``rows`` (default all)."""
        rows = np.arange(len(self.X)) if rows is None else rows
        lab = self.labels[rows, self.k]
        h = horizon_days(self.horizons_months[self.k])
        t, s = self.time_days[rows], self.status[rows]
        return {"n": len(rows), "events": int(np.nansum(lab == 1)), "known_event_free": int(np.sum(lab == 0)),
                "deaths_first": int(np.sum((s == 2) & (t <= h))), "censored_before": int(np.isnan(lab).sum()),
                "events_observed": int(np.sum(s == EVENT))}


def outcome_data(prep: Prepared, outcome: str, cfg: TrainConfig) -> OutcomeData:
    """Rows, split, folds and censoring weights of ``outcome``; refuses too few events."""
    ts = prep.training_set
    time_col, status_col = f"{outcome}_time_days", f"{outcome}_status"
    rows = ts[ts[time_col].notna() & (ts[time_col] >= 0)]
    if len(rows) < len(ts):
        logger.warning("%s: %d procedures without a follow-up time are left out", outcome, len(ts) - len(rows))
    t = rows[time_col].to_numpy(dtype="float64")
    s = rows[status_col].to_numpy().astype("int64")
    horizons = cfg.horizons_months
    k = horizons.index(cfg.horizon_months)
    y_h = crude_label(t, s, horizon_days(cfg.horizon_months))
    n_events, n_free, n_cens = int(np.nansum(y_h == 1)), int(np.sum(y_h == 0)), int(np.isnan(y_h).sum())
    if n_events < cfg.min_events or n_free < cfg.min_events:
        raise TrainingRefused(
            f"{outcome}: too few events to train: {n_events} events and {n_free} known event-free among {len(rows)} "
            f"procedures at {cfg.horizon_months:g} months ({n_cens} censored before the horizon); at least "
            f"{cfg.min_events} of each are needed. Use a larger export or a longer horizon.")
    strata = np.where(np.isnan(y_h), 2, y_h).astype(int)  # event / event-free / censored early
    patients = rows["patient_id"].astype(str).to_numpy()
    train, test = train_test_split_grouped(strata, patients, cfg.test_size, cfg.seed)
    test_events = int(np.nansum(y_h[test] == 1))
    if test_events < cfg.min_test_events or int(np.sum(y_h[test] == 0)) < cfg.min_test_events:
        raise TrainingRefused(
            f"{outcome}: too few events in the test split: {test_events} events among {len(test)} test procedures "
            f"({n_events} events among {len(rows)} overall); at least {cfg.min_test_events} are needed. Raise "
            "--test-size or use a larger export.")
    folds = cv_folds(strata[train], patients[train], cfg.cv_folds, cfg.seed)
    G = censoring_model(cfg.censoring_model, t, s, rows, train, until=horizon_days(max(horizons)))
    labels, weights = horizon_targets(t, s, horizons, G)
    feature_set = cfg.feature_set_for(outcome)
    X = rows[feature_names(feature_set)]
    return OutcomeData(outcome, X, t, s, patients, train, test, folds, G, horizons, labels, weights, k, feature_set)


def truth_curves(prep: Prepared, outcome: str, ids: pd.Index, horizons_months) -> dict[float, np.ndarray] | None:
    """True cumulative incidence per horizon (months -> array over ``ids``) from the
    simulator's truth.parquet (``p_<outcome>_<m>m``), or None when it lacks any of them."""
    if prep.truth is None:
        return None
    cols = {h: f"p_{outcome}_{horizon_column(h)[2:]}" for h in horizons_months}
    missing = [c for c in cols.values() if c not in prep.truth.columns]
    if missing:
        logger.warning("truth.parquet lacks %s: oracle metrics skipped", ", ".join(missing))
        return None
    out = {h: prep.truth[c].reindex(ids).to_numpy(dtype="float64") for h, c in cols.items()}
    if any(np.isnan(v).any() for v in out.values()):
        logger.warning("truth.parquet lacks some procedures: oracle metrics skipped")
        return None
    return out
