"""Generate the data dictionary (markdown) from the raw contract and the feature catalogue."""

from __future__ import annotations

import typing

from features.ascertainment import DEFAULT_WITHOUT_FILE, EXPORT_METADATA_FILE, ExportMetadata
from features.catalog import FEATURES, feature_names
from features.contract import COLUMN_RULES, MAX_TEXT_CHARS, MEASUREMENT_ERRORS, PLAUSIBILITY_RULES
from features.labels import OUTCOMES
from features.levels import THORACOLUMBAR_DEFINITION
from features.sarcopenia import SARCOPENIA_SOURCE
from features.schema import SCHEMA_VERSION, TABLES
from features.validate import TABLE_RULES


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _allowed(annotation) -> str:
    """The values a metadata field takes, from its type."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return ", ".join(f"`{a}`" for a in args)
    kind = args[0] if args else annotation
    return {"date": "date (YYYY-MM-DD)", "str": "text"}.get(getattr(kind, "__name__", str(kind)), str(kind))


def data_dictionary_markdown() -> str:
    """The data dictionary as markdown: raw tables column by column, then derived features."""
    lines = [
        "# Data dictionary",
        "",
        f"Generated from `features/schema.py` and `features/catalog.py` (schema version {SCHEMA_VERSION}) "
        "by `refracture dictionary --out docs/data-dictionary.md`. Do not edit by hand.",
        "",
        "## Raw export",
        "",
        "A raw export is a folder with one file per table, `<table>.csv` or `<table>.parquet`. "
        "Dates are ISO 8601 (`YYYY-MM-DD`). Empty cells are missing values. "
        "`timing` says when a value becomes known relative to surgery; the pre-operative feature set uses only `preop` values.",
        "",
    ]
    for spec in TABLES.values():
        lines += [f"### `{spec.name}`", "", spec.description, "", f"Key: `{', '.join(spec.key)}`.", "",
                  "| column | type | unit | allowed | required | timing | definition |",
                  "|---|---|---|---|---|---|---|"]
        for c in spec.columns:
            lines.append(
                f"| `{c.name}` | {c.kind} | {_cell(c.unit) or '–'} | {_cell(c.range_text) or '–'} | "
                f"{'no' if c.nullable else 'yes'} | {c.timing} | {_cell(c.definition)} |"
            )
        lines.append("")
    lines += [
        f"### Site metadata: `{EXPORT_METADATA_FILE}`",
        "",
        f"A YAML file beside the tables saying how far the export's follow-up reaches; the labels follow it "
        "(`features/ascertainment.py`, `docs/estimand.md`). Unknown fields are refused; each bad field is named.",
        "",
        "| field | allowed | required | definition |",
        "|---|---|---|---|",
        *[f"| `{name}` | {_allowed(f.annotation)} | {'yes' if f.is_required() else 'no'} | {_cell(f.description or '')} |"
          for name, f in ExportMetadata.model_fields.items()],
        "",
        DEFAULT_WITHOUT_FILE,
        "",
        "### Errors and warnings",
        "",
        "Every rule reports an **error** (the value cannot be used: wrong type, impossible, broken keys, a unit slip) "
        "or a **warning** (implausible but possible: the value is used, the warning counted and reported). "
        "`refracture validate` lists both and exits 1 only on errors. `train`, `site-report`, `recalibrate`, "
        "`features` and `predict --raw` stop on errors, or with `--exclude-invalid` leave out the procedures the "
        "errors touch (a patient's or an event's error: all that patient's procedures; an imaging row's: its "
        "procedure) and write an exclusion report (table, row key, column, rule, severity, message, excluded "
        "procedures) whose count and SHA-256 go with the output or the MLflow run. The service refuses a record "
        "with an error and scores one with warnings.",
        "",
        "| rule | severity | checks |",
        "|---|---|---|",
        *[f"| `{name}` | error | {_cell(text)} |" for name, text in COLUMN_RULES.items()],
        *[f"| `{name}` | error | {_cell(text)} |" for name, text in TABLE_RULES.items()],
        *[f"| `{rule.name}` | {' or '.join(rule.severities)} | {_cell(rule.description)} |" for rule in PLAUSIBILITY_RULES],
        "",
        "### Measurement error the rules allow for",
        "",
        "Rules between values (`features.contract`) compare measurements only beyond the error of the instrument:",
        "",
        "| constant | value | unit | meaning | source |",
        "|---|---|---|---|---|",
        *[f"| `{m.name}` | {m.value:g} | {_cell(m.unit)} | {_cell(m.meaning)} | {_cell(m.source)} |"
          for m in MEASUREMENT_ERRORS],
        "",
        f"Also: no date after today (nor after the data cut `{EXPORT_METADATA_FILE}` states: an error); text at most "
        f"{MAX_TEXT_CHARS} characters; CSV flags may be written `True`/`False`; "
        "a semicolon-separated CSV is read with decimal commas in its number columns; sacral events (S1–S5) are "
        "accepted and set aside (the outcomes are vertebral).",
        "",
        "## Derived features",
        "",
        f"Thoracolumbar junction: {THORACOLUMBAR_DEFINITION}. Sarcopenia: {SARCOPENIA_SOURCE}.",
        "",
        f"Feature set `preop`: {len(feature_names('preop'))} features. Feature set `postop`: "
        f"{len(feature_names('postop'))} features (adds procedure, cement and immediate post-operative imaging). "
        "`followup` features belong to neither set.",
        "",
        "| feature | group | timing | unit | label | definition |",
        "|---|---|---|---|---|---|",
    ]
    for f in FEATURES:
        lines.append(f"| `{f.name}` | {f.group} | {f.timing} | {_cell(f.unit) or '–'} | {_cell(f.label)} | {_cell(f.definition) or '–'} |")
    lines += [
        "",
        "## Labels",
        "",
        f"Outcomes: {', '.join(f'`{o}`' for o in OUTCOMES)}; see `features/labels.py` for the definitions. "
        "Per outcome: `<outcome>_time_days`, `<outcome>_status` (0 censored, 1 event, 2 death first), "
        "`<outcome>_event` (1 observed, 0 censored) and the binary `<outcome>` at the horizon (default 24 months): "
        "missing when follow-up ended before the horizon without the event. Death: `death_time_days`, "
        "`death_status` (1 died, 0 censored alive) and `death`. Follow-up ends where "
        f"`{EXPORT_METADATA_FILE}` says: for death at the data cut (registry) or the last contact; for the fractures "
        "at death or the data cut, or at the last contact.",
        "",
    ]
    return "\n".join(lines)
