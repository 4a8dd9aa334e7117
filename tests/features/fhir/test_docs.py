"""docs/fhir.md is the mapping's (regenerate with `refracture fhir-docs --out docs/fhir.md`)."""

from __future__ import annotations

from pathlib import Path

from features.fhir.docs import fhir_markdown
from features.fhir.mapping import FIELD_MAPS

DOC = Path(__file__).resolve().parents[3] / "docs" / "fhir.md"


def test_committed_doc_equals_the_generated_one():
    assert DOC.read_text(encoding="utf-8") == fhir_markdown(), "run: refracture fhir-docs --out docs/fhir.md"


def test_every_standard_code_names_its_source():
    for fm in FIELD_MAPS:
        for code in fm.codes:
            assert code.source.startswith("http"), (fm.field, code.code)
