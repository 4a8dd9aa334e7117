"""``refracture site-report`` and ``refracture recalibrate``: registry and MLflow around the
pure parts (``training.site_eval``, ``training.site_report``, ``training.recalibrate``).

The CLI (``refracture.commands.site``) reads and validates the export; this module loads
the chosen versions, scores, writes the report folder (all files first into a temporary
folder, then moved into place, so nothing partial is written) and logs the MLflow run.
"""

from __future__ import annotations

import io
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import mlflow.artifacts
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from features.ascertainment import Ascertainment
from features.drift import build_reference, drift_table
from features.exclusion import VALIDATION_ARTIFACT, ExclusionReport
from features.io import tmp_dir_beside
from features.labels import OUTCOMES, horizon_days
from modelstore.artifact import log_model
from modelstore.drift_reference import REFERENCE_TAG, load_reference, log_reference
from modelstore.model import RefractureModel, example_records
from modelstore.runs import tracked_run
from modelstore.tracking import get_or_create_experiment
from training import registry
from training.pooled import decide_with_pool
from training.provenance import data_fingerprint
from training.recalibrate import MIN_EVENTS_REFIT, Decision
from training.site_eval import SiteData, evaluate_outcome, training_site_metrics
from training.site_report import render_site_report

logger = logging.getLogger(__name__)

SITE_REPORT_EXPERIMENT = "refracture-site-reports"
RECALIBRATION_EXPERIMENT = "refracture-recalibrations"
#: Tags copied from the parent version to a recalibrated one (serving checks the first three).
_INHERITED = ("estimand", "horizons_months", "horizon_months", "outcome", "feature_set", "schema_version",
              "model_type", "simulator_profile", REFERENCE_TAG, *Ascertainment().tags())


@dataclass
class Chosen:
    outcome: str
    version: str
    tags: dict[str, str]
    model: RefractureModel


def choose_versions(alias: str | None, version: str | None, outcomes=OUTCOMES) -> list[Chosen]:
    """The versions to report: ``version`` of each of ``outcomes`` or the one holding
    ``alias``; outcomes with no such version are skipped (ValueError if none is left)."""
    client = mlflow.MlflowClient()
    out = []
    for outcome in outcomes:
        if version is not None:
            mv = client.get_model_version(registry.model_name(outcome), str(version))
        else:
            mv = registry.current_version(outcome, alias)
            if mv is None:
                logger.warning("%s: no version holds the alias %r; left out", outcome, alias)
                continue
        out.append(Chosen(outcome, str(mv.version), dict(mv.tags or {}), registry.load_version(outcome, mv.version)))
    if not out:
        raise ValueError(f"no registered version with alias {alias!r} for {', '.join(outcomes)}: train (and promote) first")
    return out


def _training_table(c: Chosen) -> pd.DataFrame | None:
    """The version's held-out figures at the training site (its training run's artifact)."""
    run_id = c.tags.get("training_run_id") or c.tags.get("run_id")
    if not run_id:
        return None
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/horizon_metrics.csv")
    except Exception:  # noqa: BLE001 - an older run without the table: the site figures alone
        logger.warning("%s v%s: training-site figures not found", c.outcome, c.version)
        return None
    return pd.read_csv(io.StringIO(text))


@dataclass
class SiteResult:
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    html: str = ""
    figures: dict = field(default_factory=dict)
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    run_id: str = ""
    tags: dict[str, str] = field(default_factory=dict)


def build_site_report(site: SiteData, chosen: list[Chosen], site_name: str, n_boot: int = 200,
                      seed: int = 0) -> SiteResult:
    """Score the site with every chosen version and build the report (nothing written).

    BLAS runs on one thread here: the censoring-aware metrics make thousands of small
    matrix-vector products (a bootstrap chunk or a single row at a time), where OpenBLAS's
    thread hand-off costs far more than the product (1 x 12k: 1.1 ms threaded vs 3 us on
    one thread, 2 busy cores); single-threaded, the 20k report's build takes half the CPU."""
    with threadpool_limits(limits=1, user_api="blas"):
        return _build_site_report(site, chosen, site_name, n_boot, seed)


def _build_site_report(site: SiteData, chosen: list[Chosen], site_name: str, n_boot: int, seed: int) -> SiteResult:
    t0 = time.perf_counter()
    stages = {"score": 0.0, "evaluate": 0.0}
    parts: dict[str, list[pd.DataFrame]] = {"metrics": [], "calibration": [], "decision": [], "subgroups": []}
    label = site_name
    for c in chosen:
        ok, t, s = site.follow_up(c.outcome)
        records = site.records[ok]
        t1 = time.perf_counter()
        curve = c.model.predict_curve(records)
        stages["score"] += time.perf_counter() - t1
        t1 = time.perf_counter()
        cohort = f"{label} (v{c.version})"
        res = evaluate_outcome(curve, t, s, c.model.horizons_months, c.model.horizon_months, site.subgroups[ok],
                               patients=site.patients[ok], cohort=cohort, outcome=c.outcome, n_boot=n_boot, seed=seed)
        for k, v in res.items():
            parts[k].append(v)
        stages["evaluate"] += time.perf_counter() - t1
        parent = c.tags.get("parent_version")
        if parent:  # a recalibrated version: its parent on the same rows shows what changed
            before = registry.load_version(c.outcome, parent).predict_curve(records)
            res = evaluate_outcome(before, t, s, c.model.horizons_months, c.model.horizon_months,
                                   site.subgroups[ok].iloc[:, :0], patients=site.patients[ok],
                                   cohort=f"{label} (parent v{parent})",
                                   outcome=c.outcome, n_boot=n_boot, seed=seed)
            for k in ("metrics", "calibration", "decision"):
                parts[k].append(res[k])
        train = _training_table(c)
        if train is not None:
            parts["metrics"].append(training_site_metrics(
                train, cohort=(f"training site {c.tags.get('simulator_profile', '')} (held-out test"
                               # A pooled refit was not evaluated there: these are its parent's figures.
                               + (f" of parent v{c.tags.get('parent_version')})"
                                  if c.tags.get("recalibration_decision") == "refit_pooled" else ")")).replace("  ", " "),
                outcome=c.outcome))
    frames = {k: pd.concat(v, ignore_index=True) for k, v in parts.items() if v}
    # Put the site's rows first: the report's summary describes the first cohort.
    frames["metrics"] = frames["metrics"].sort_values("cohort", key=lambda s: s.str.startswith("training"),
                                                      kind="stable")
    t1 = time.perf_counter()
    reference = load_reference(chosen[0].tags, f"{chosen[0].outcome} v{chosen[0].version}")
    drift = drift_table(reference, site.records)
    frames["drift"] = drift
    stages["drift"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    models = ", ".join(f"{registry.model_name(c.outcome)} v{c.version}" for c in chosen)
    report = render_site_report(drift, reference, site.records, site=site_name, followup=followup_sentences(site, chosen),
                                training_site=chosen[0].tags.get("simulator_profile") or "the training data",
                                metrics=frames["metrics"], calibration=frames.get("calibration"),
                                decision=frames.get("decision"), subgroups=frames.get("subgroups"), model=models,
                                generated_on=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                                decision_horizon_months=chosen[0].model.horizon_months)
    stages["render"] = time.perf_counter() - t1
    return SiteResult(frames, report.html, report.figures, time.perf_counter() - t0, stages,
                      tags=site.ascertainment.tags())


def followup_sentences(site: SiteData, chosen: list[Chosen]) -> list[str]:
    """How far the site's export ascertained deaths and fractures (its labels follow it),
    its notes, and each version's training export when that was followed differently:
    observed/expected then also reflects the difference (e.g. a model trained where
    deaths did not compete over-predicts where they do)."""
    asc = site.ascertainment
    out = [f"{asc.describe()}."] + [f"Note: {n}." for n in site.followup_notes]
    for c in chosen:
        trained = (c.tags.get("deaths_ascertained_until"), c.tags.get("fractures_ascertained_until"))
        if trained[0] and trained != (asc.deaths_until, asc.fractures_until):
            out.append(f"{c.outcome} v{c.version} was trained on an export with deaths ascertained until "
                       f"{trained[0].replace('_', ' ')} and fractures until {trained[1].replace('_', ' ')}.")
    return out


def write_report(result: SiteResult, out_dir: Path, extra: dict[str, bytes] | None = None) -> None:
    """report.html, figures/*.png, one CSV per table and the ``extra`` files (name -> bytes,
    e.g. the exclusion report) into ``out_dir``, all or nothing."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir_beside(out_dir)
    try:
        (tmp / "report.html").write_text(result.html, encoding="utf-8")
        for name, data in (extra or {}).items():
            (tmp / name).write_bytes(data)
        (tmp / "figures").mkdir()
        for name, fig in result.figures.items():
            png = getattr(fig, "png_bytes", None)
            if png is not None:
                (tmp / "figures" / name).write_bytes(png)
            else:
                fig.savefig(tmp / "figures" / name, metadata={"Software": None})
        for name, frame in result.frames.items():
            frame.to_csv(tmp / f"{name}.csv", index=False)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def log_report(out_dir: Path, chosen: list[Chosen], site_name: str, result: SiteResult,
               validation: dict[str, str] | None = None) -> str:
    """An MLflow run in ``refracture-site-reports`` holding the report folder; returns its id.
    ``validation``: the export's exclusion counts and report fingerprint
    (``features.exclusion.ExclusionReport.summary``), set as tags."""
    exp = get_or_create_experiment(SITE_REPORT_EXPERIMENT)
    with tracked_run(experiment_id=exp, run_name=f"{site_name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}") as run:
        mlflow.set_tags({"site": site_name, **{f"version.{c.outcome}": c.version for c in chosen}, **result.tags,
                         **(validation or {})})
        m = result.frames["metrics"]
        for c in chosen:
            rows = m[(m["outcome"] == c.outcome) & ~m["cohort"].str.startswith("training")]
            head = rows[abs(rows["horizon"] - rows["horizon"].max()) < 1]
            for _, r in head.iterrows():
                for k in ("td_auroc", "observed_expected", "calibration_slope", "calibration_intercept"):
                    if pd.notna(r[k]):
                        mlflow.log_metric(f"{c.outcome}_{k}", float(r[k]))
        mlflow.log_metric("n_inputs_major_shift", int((result.frames["drift"]["status"] == "major shift").sum()))
        mlflow.log_metric("seconds", result.seconds)
        mlflow.log_metrics({f"seconds_{k}": v for k, v in result.stages.items()})
        mlflow.log_artifacts(str(out_dir))
        return run.info.run_id


# ---------------------------------------------------------------- recalibrate

def training_export(c: Chosen, pooled_with: Path | None) -> tuple[Path | None, str]:
    """Where option (iii) finds the version's training export: ``pooled_with`` if given,
    else the ``raw_dir`` parameter of the version's training run (its ``parent_run_id``).
    Returns (folder or None, how it was found or why not)."""
    if pooled_with is not None:
        return Path(pooled_with), f"given with --pooled-with {pooled_with}"
    if c.tags.get("site"):
        return None, "this version is already a site update; give the training export with --pooled-with DIR"
    raw_dir = ""
    if c.tags.get("parent_run_id"):
        try:
            raw_dir = mlflow.MlflowClient().get_run(c.tags["parent_run_id"]).data.params.get("raw_dir", "")
        except Exception:  # noqa: BLE001 - a missing run only makes (iii) ineligible
            raw_dir = ""
    if not raw_dir:
        return None, "the version's training run records no export (raw_dir); give it with --pooled-with DIR"
    if not Path(raw_dir).is_dir():
        return None, f"the training export recorded on the version ({raw_dir}) is not found; give it with --pooled-with DIR"
    return Path(raw_dir), f"recorded on the version's training run ({raw_dir})"


def recalibrate_outcome(site: SiteData, c: Chosen, site_name: str, pooled_with: Path | None = None,
                        load_pool=None, n_jobs: int = 2, validation: ExclusionReport | None = None
                        ) -> tuple[Decision, str | None]:
    """Apply the rule to one champion; register a ``challenger`` unless it says 'none'.
    ``load_pool(folder) -> SiteData`` reads and validates the training export for option
    (iii) (only called with enough local events). ``validation``: the site export's
    exclusion report, logged with the new version's run (``validation/exclusions.csv``)
    and its counts and fingerprint as tags of the run and the version. Returns (decision,
    new version or None)."""
    ok, t, s = site.follow_up(c.outcome)
    model = c.model
    X_site = model.features(site.records[ok])
    eta = model.score_from_features(X_site)
    headline_events = int(((s == 1) & (t <= horizon_days(model.horizon_months))).sum())
    pool, pool_note, pool_tags, pool_records = None, "", {}, None
    if headline_events >= MIN_EVENTS_REFIT and load_pool is not None:
        folder, pool_note = training_export(c, pooled_with)
        if folder is not None:
            fingerprint = data_fingerprint(folder)
            same = fingerprint == c.tags.get("data_fingerprint")
            pool_tags = {"pooled_data_dir": str(Path(folder).resolve())[:4000], "pooled_data_fingerprint": fingerprint,
                         "pooled_data_matches_training": str(same).lower()}
            if not same and pooled_with is None:
                pool_note = (f"the training export at {folder} changed since training (fingerprint differs); give the "
                             "original with --pooled-with DIR")
            else:
                if not same:
                    pool_note += " (NOT the version's training data by its fingerprint: used as given)"
                data = load_pool(Path(folder))
                pool_tags.update(data.ascertainment.tags(prefix="pooled_"))
                pok, pt, ps = data.follow_up(c.outcome)
                pool_records = data.records[pok]
                pool = (model.features(pool_records), pt, ps)
    groups = site.patients[ok]
    d = decide_with_pool(model.model_type, model.params, model.outcome, model.calibration, eta, X_site, t, s,
                         groups, model.horizon_months, pool, pool_note, n_jobs=n_jobs)
    if pool is not None:
        d.note += f"; training export {pool_note}"
    if d.choice == "none":
        return d, None
    scorer = d.scorer if d.choice == "refit_pooled" else model.scorer
    new = RefractureModel(scorer, d.calibration, model.outcome, model.feature_set, model.horizon_months,
                          model.feature_names, {}, model.params,
                          {**model.info, "recalibrated_for_site": site_name, "parent_version": c.version,
                           "recalibration_method": d.choice, **(pool_tags if d.choice == "refit_pooled" else {})},
                          explanation_method=model.explanation_method)
    exp = get_or_create_experiment(RECALIBRATION_EXPERIMENT)
    with tracked_run(experiment_id=exp, run_name=f"{c.outcome}-{site_name}") as run:
        tags = {**{k: c.tags[k] for k in _INHERITED if k in c.tags}, **d.tags(), "site": site_name,
                **site.ascertainment.tags(prefix="site_"),
                "parent_version": c.version, "parent_run_id": c.tags.get("run_id", ""),
                "training_run_id": c.tags.get("training_run_id") or c.tags.get("run_id", ""),
                **(pool_tags if d.choice == "refit_pooled" else {}), **(validation.summary() if validation else {})}
        if d.choice == "refit_pooled":
            # A new score model fitted on the pooled rows: its reference is theirs.
            reference = build_reference(pd.concat([pool_records, site.records[ok]], ignore_index=True))
        else:  # the same score model and training population: the parent's reference
            reference = load_reference(c.tags, f"{c.outcome} v{c.version}")
        # Stored in this run too so serving finds it beside the model.
        tags[REFERENCE_TAG] = log_reference(reference, run.info.run_id)
        mlflow.set_tags(tags)
        mlflow.log_dict({"parent": c.model.calibration.to_dict(), "recalibrated": d.calibration.to_dict()},
                        "calibration.json")
        if validation is not None:
            mlflow.log_text(validation.csv_bytes().decode("utf-8"), VALIDATION_ARTIFACT)
        uri = log_model(new, example_records(site.records[ok]))
        tags["run_id"] = run.info.run_id
    mv = registry.register(uri, c.outcome, tags, description=f"Recalibrated for {site_name}: {d.choice} ({d.note})")
    registry.set_alias(c.outcome, mv.version, registry.CHALLENGER,
                       f"refracture recalibrate --site {site_name}: {d.choice}")
    return d, str(mv.version)
