"""CDS Hooks cards from the service's scored answer: one card per treated level.

CDS Hooks 2.0 "Card Attributes" (https://cds-hooks.hl7.org/2.0/#card-attributes): ``summary``
REQUIRED, "One-sentence, <140-character summary message"; ``indicator`` REQUIRED, "Allowed
values, in order of increasing urgency, are: info, warning, critical"; ``source`` REQUIRED with
``label`` REQUIRED and ``url`` OPTIONAL ("an optional absolute URL to load ... to learn more
about the organization or data set that provided the information on this card"); ``detail``
OPTIONAL, "(GitHub Flavored) Markdown"; ``uuid`` OPTIONAL "Unique identifier of the card";
``links`` OPTIONAL, each ``label``, ``url`` and ``type`` (``absolute`` | ``smart``), all
REQUIRED. "JSON elements SHALL NOT be null ... OPTIONAL ... implementers MUST omit it."

What a card says:

- **summary**: the 24-month risks of the three outcomes (death competing), e.g. "24-month
  risk after L1 vertebroplasty: cemented 4.1%, adjacent 12.3% (high), remote 2.0%".
- **indicator**: from the highest risk band of the three (``INDICATOR_BY_BAND``): a high band
  is a ``warning`` (secondary fracture prevention deserves a look now); low and intermediate
  are ``info``. Never ``critical``: a risk over two years is not an emergency.
- **source**: the model card (``REFRACTURE_MODEL_CARD_URL``, else the service's ``/model``).
- **detail**: the risk curve of each outcome at 3, 6, 12 and 24 months, the probability of
  death by 24 months, the top factors of each 24-month risk in clinical words, with the
  statement that they are associations in the model, not causes, and the inputs that were
  missing; the model versions.
- **links**: the clinician page with this patient's record filled in (``/ui/#record=...``:
  in the URL's fragment, which a browser never sends to a server).
- **extension** ``EXTENSION``: the numbers themselves, for a client that stores or audits them:
  the procedure, each outcome's curve (full precision), band and model, and the death context.
  CDS Hooks 2.0 "Extensions": "the specification reserves the name extension ... allowing
  implementations to use it to provide custom behavior and information. The value of an
  extension element MUST be a pre-coordinated JSON object", named "using a strategy ... such
  as reverse-domain-name notation".
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import orjson

from features.fhir.codes import OUTCOME_TEXT

#: A card's indicator by the highest risk band of its outcomes (module docstring).
INDICATOR_BY_BAND = {"low": "info", "intermediate": "info", "high": "warning"}
INDICATORS = ("info", "warning", "critical")
#: Longest summary (CDS Hooks: "<140-character").
MAX_SUMMARY = 139
SHORT = {"cemented_refracture": "cemented", "adjacent_fracture": "adjacent", "remote_fracture": "remote"}
TECHNIQUE_WORDS = {"PVP": "vertebroplasty", "PKP": "kyphoplasty"}
ASSOCIATION_NOTE = ("These factors are what the model associates with the risk in patients like this one; they "
                    "are associations, not causes: changing one does not necessarily change the risk.")
_BAND_ORDER = ("low", "intermediate", "high")
#: The card extension holding the numbers (reverse-domain name of the project's canonical base).
EXTENSION = "example.refracture-risk.prediction"


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%"


def summary(procedure: dict[str, Any], outcomes: dict[str, dict[str, Any]]) -> str:
    """One sentence under 140 characters with the 24-month risk of every outcome."""
    what = f"{procedure.get('level') or ''} {TECHNIQUE_WORDS.get(procedure.get('technique'), 'augmentation')}".strip()
    parts = [f"{SHORT.get(o, o)} {_pct(item['probability'])}" + (f" ({item['risk_band']})"
                                                                  if item.get("risk_band") != "low" else "")
             for o, item in outcomes.items()]
    text = f"24-month fracture risk after {what}: {', '.join(parts)}"
    if len(text) > MAX_SUMMARY:
        text = f"24-month risk: {', '.join(parts)}"
    return text[:MAX_SUMMARY]


def indicator(outcomes: dict[str, dict[str, Any]]) -> str:
    """The indicator of the highest risk band among ``outcomes``."""
    worst = max((item.get("risk_band") or "low" for item in outcomes.values()), key=_BAND_ORDER.index)
    return INDICATOR_BY_BAND[worst]


def detail(procedure: dict[str, Any], prediction: dict[str, Any]) -> str:
    """The card's markdown detail (module docstring)."""
    outcomes = prediction["outcomes"]
    horizons = list(next(iter(outcomes.values()))["curve"])
    technique = TECHNIQUE_WORDS.get(procedure.get("technique"), "augmentation")
    lines = [f"**Risk of a new vertebral fracture after {technique} of {procedure.get('level')} "
             f"on {procedure.get('surgery_date')}** (cumulative incidence; death counted as a competing event)", "",
             "| Outcome | " + " | ".join(f"{h} mo" for h in horizons) + " | Band at 24 mo |",
             "|---|" + "---|" * len(horizons) + "---|"]
    for o, item in outcomes.items():
        lines.append(f"| {OUTCOME_TEXT.get(o, o)} | " + " | ".join(_pct(item["curve"][h]) for h in horizons)
                     + f" | {item.get('risk_band', '')} |")
    death = (prediction.get("context") or {}).get("death")
    if death:
        lines += ["", f"Probability of death from any cause by {float(death['horizon_months']):g} months: "
                      f"{_pct(death['probability'])} (context for the risks above)."]
    lines += ["", "**Top factors of each 24-month risk**", "", ASSOCIATION_NOTE, ""]
    for o, item in outcomes.items():
        explanation = item.get("explanation") or {}
        factors = [f["text"] for f in (explanation.get("raising") or []) + (explanation.get("lowering") or [])]
        if factors:
            lines.append(f"- *{OUTCOME_TEXT.get(o, o)}*: " + "; ".join(factors) + ".")
    missing = sorted({d["field"] for item in outcomes.values() for d in item.get("missing_inputs") or []})
    if missing:
        lines += ["", "Not in the record (handled as the model was trained to): " + ", ".join(missing) + "."]
    models = [item["model"] for item in outcomes.values()] + ([death["model"]] if death else [])
    lines += ["", "Models: " + ", ".join(f"{m['name']} v{m['version']}" for m in models) + "."]
    return "\n".join(lines)


def record_link(base_url: str, record: dict[str, Any]) -> str:
    """The clinician page with ``record`` filled in: base64url JSON in the URL's fragment."""
    token = base64.urlsafe_b64encode(orjson.dumps(record)).rstrip(b"=").decode("ascii")
    return f"{base_url}/ui/#record={token}"


def card(record: dict[str, Any], prediction: dict[str, Any], source_url: str | None, public_url: str | None) -> dict[str, Any]:
    """One card for one scored record (``record``: the nested record the FHIR data gave;
    ``prediction``: its ``/explain`` answer item)."""
    procedure = record["procedure"]
    outcomes = prediction["outcomes"]
    source: dict[str, Any] = {"label": "refracture-risk model card"}
    if source_url:
        source["url"] = source_url
    out: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": summary(procedure, outcomes),
        "indicator": indicator(outcomes),
        "detail": detail(procedure, prediction),
        "source": source,
    }
    if public_url:
        out["links"] = [{"label": "Review in the refracture-risk clinician page", "url": record_link(public_url, record),
                         "type": "absolute"}]
    out["extension"] = {EXTENSION: numbers(procedure, prediction)}
    return out


def numbers(procedure: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any]:
    """The card extension's content: what was scored and its numbers at full precision."""
    out: dict[str, Any] = {
        "procedure_id": prediction["procedure_id"], "surgery_date": procedure.get("surgery_date"),
        "level": procedure.get("level"),
        "outcomes": {o: {"curve": item["curve"], "horizon_months": item["horizon_months"], "probability": item["probability"],
                         "risk_band": item["risk_band"], "model": item["model"]}
                     for o, item in prediction["outcomes"].items()}}
    death = (prediction.get("context") or {}).get("death")
    if death:
        out["death"] = death
    return {k: v for k, v in out.items() if v is not None}


def card_problems(c: dict[str, Any]) -> list[str]:
    """What makes ``c`` not a CDS Hooks 2.0 card (empty when it is one): the rules above."""
    out = []
    if not isinstance(c.get("summary"), str) or not c["summary"] or len(c["summary"]) >= 140:
        out.append("summary must be a non-empty string under 140 characters")
    if c.get("indicator") not in INDICATORS:
        out.append(f"indicator must be one of {INDICATORS}")
    source = c.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("label"), str) or not source["label"]:
        out.append("source.label is required")
    elif "url" in source and not str(source["url"]).startswith(("https://", "http://")):
        out.append("source.url must be an absolute URL")
    if "uuid" in c:
        try:
            uuid.UUID(str(c["uuid"]))
        except ValueError:
            out.append("uuid must be a UUID")
    for i, link in enumerate(c.get("links") or []):
        if not all(isinstance(link.get(k), str) and link[k] for k in ("label", "url", "type")):
            out.append(f"links[{i}] needs label, url and type")
        elif link["type"] not in ("absolute", "smart"):
            out.append(f"links[{i}].type must be absolute or smart")
    if "suggestions" in c and "selectionBehavior" not in c:
        out.append("suggestions need selectionBehavior")
    for k, v in c.items():
        if v is None or v == "" or v == [] or v == {}:
            out.append(f"{k} must be omitted rather than empty")
    return out
