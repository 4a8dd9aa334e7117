"""How far an export ascertained deaths and fractures (``export.yaml``,
``features.ascertainment``) and the labels that follow it: deaths recorded from a registry
after the last clinic contact count for the death target, compete with the fractures
only when fractures were ascertained until death, and are never dropped without a note."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from features.ascertainment import (Ascertainment, ExportMetadata, checked, followup_notes, latest_date,
                                    metadata_text, resolve)
from features.io import read_export_metadata
from features.labels import DEATH, build_labels
from features.validate import RawDataError, validate_raw
from fixtures import raw_tables

REGISTRY = Ascertainment("data_cut", "death_or_data_cut", date(2023, 6, 30), "export.yaml")
CLINIC = Ascertainment("last_contact", "last_contact", None, "export.yaml")


def _c3_dies_after_last_contact(raw) -> dict:
    """C3 (L1+L2 treated 2021-03-15) last seen 2021-05-01, died 2021-06-01 (a registry
    date), no fracture: the typed tables."""
    raw["patients"].loc[raw["patients"]["patient_id"] == "C3", ["death_date", "last_followup_date"]] = \
        ["2021-06-01", "2021-05-01"]
    raw["events"] = raw["events"][raw["events"]["patient_id"] != "C3"]
    return validate_raw(raw)


def test_registry_death_counts_and_competes_when_fractures_are_followed_to_death(raw):
    labels = build_labels(_c3_dies_after_last_contact(raw), ascertainment=REGISTRY)
    died_day = (pd.Timestamp("2021-06-01") - pd.Timestamp("2021-03-15")).days
    assert labels.loc["C3-1", "death_status"] == 1 and labels.loc["C3-1", "death_time_days"] == died_day
    assert labels.loc["C3-1", "death"] == 1
    for outcome in ("remote_fracture", "adjacent_fracture", "cemented_refracture"):
        assert labels.loc["C3-1", f"{outcome}_status"] == DEATH
        assert labels.loc["C3-1", f"{outcome}_time_days"] == died_day
        assert labels.loc["C3-1", outcome] == 0  # known: died without it
    # A1 is alive: known alive (and fracture-free after its refracture) until the data cut.
    cut_day = (pd.Timestamp("2023-06-30") - pd.Timestamp("2021-01-10")).days
    assert labels.loc["A1-1", "death_status"] == 0 and labels.loc["A1-1", "death_time_days"] == cut_day
    assert labels.loc["A1-1", "remote_fracture_time_days"] == cut_day


def test_registry_death_does_not_compete_when_fractures_end_at_the_last_contact(raw):
    tables = _c3_dies_after_last_contact(raw)
    asc = Ascertainment("data_cut", "last_contact", date(2023, 6, 30), "export.yaml")
    labels = build_labels(tables, ascertainment=asc)
    assert labels.loc["C3-1", "death_status"] == 1  # the death target counts it
    assert labels.loc["C3-1", "remote_fracture_status"] == 0  # fracture status after 2021-05-01 is unknown
    assert pd.isna(labels.loc["C3-1", "remote_fracture"])
    assert labels.loc["C3-1", "remote_fracture_time_days"] == (pd.Timestamp("2021-05-01") - pd.Timestamp("2021-03-15")).days
    (note,) = followup_notes(asc, tables)
    assert "1 deaths recorded after the last contact do not compete" in note and "death_or_data_cut" in note


def test_clinic_ascertainment_keeps_the_old_labels_and_says_what_it_left_out(raw):
    tables = _c3_dies_after_last_contact(raw)
    labels = build_labels(tables, ascertainment=CLINIC)
    assert labels.loc["C3-1", "death_status"] == 0 and labels.loc["C3-1", "remote_fracture_status"] == 0
    notes = followup_notes(CLINIC, tables)
    assert any("1 deaths recorded after the last contact are not counted" in n for n in notes)


def test_without_export_yaml_recorded_deaths_count_and_fractures_end_at_the_last_contact(raw):
    tables = _c3_dies_after_last_contact(raw)
    asc = resolve(None, tables)
    assert (asc.deaths_until, asc.fractures_until, asc.source, asc.inferred_data_cut) == \
        ("data_cut", "last_contact", "default", True)
    assert asc.data_cut == latest_date(tables) == date(2023, 6, 1)  # B2's last contact, the latest date
    labels = build_labels(tables)  # no ascertainment given: the same default
    assert labels.loc["C3-1", "death_status"] == 1 and labels.loc["C3-1", "remote_fracture_status"] == 0
    notes = followup_notes(asc, tables)
    assert len(notes) == 2 and "latest date in the export" in notes[0] and "do not compete" in notes[1]
    # An export whose deaths are all at the last contact keeps the clinic reading, silently.
    assert resolve(None, validate_raw(raw_fresh())) == Ascertainment()


def raw_fresh():
    return raw_tables()


def test_death_on_the_last_contact_competes_under_every_ascertainment(raw):
    raw["patients"].loc[raw["patients"]["patient_id"] == "C3", ["death_date", "last_followup_date"]] = \
        ["2021-05-01", "2021-05-01"]
    raw["events"] = raw["events"][raw["events"]["patient_id"] != "C3"]
    tables = validate_raw(raw)
    for asc in (None, CLINIC, REGISTRY):
        labels = build_labels(tables, ascertainment=asc)
        assert labels.loc["C3-1", "remote_fracture_status"] == DEATH and labels.loc["C3-1", "death_status"] == 1
    assert followup_notes(resolve(None, tables), tables) == []


def test_export_yaml_is_read_and_each_bad_field_is_named(tmp_path):
    assert read_export_metadata(tmp_path) is None
    meta = ExportMetadata(site="Hospital C", data_cut=date(2024, 1, 31), deaths_ascertained_until="data_cut",
                          fractures_ascertained_until="death_or_data_cut")
    (tmp_path / "export.yaml").write_text(metadata_text(meta))
    assert read_export_metadata(tmp_path) == Ascertainment("data_cut", "death_or_data_cut", date(2024, 1, 31),
                                                           "export.yaml", "Hospital C")
    cases = {
        "deaths_ascertained_until: registry\nfractures_ascertained_until: last_contact\n":
            [("deaths_ascertained_until", "'last_contact' or 'data_cut'")],
        "data_cut: 2024-13-01\ndeaths_ascertained_until: data_cut\nfractures_ascertained_until: last_contact\n":
            [("data_cut", "2024-13-01")],
        "deaths_ascertained_until: last_contact\nfractures_ascertained_until: death_or_data_cut\n":
            [("-", "needs deaths_ascertained_until: data_cut")],
        "deaths_ascertained_until: data_cut\nfractures_ascertained_until: last_contact\n":
            [("-", "data_cut is required")],
        "deaths_ascertained_until: last_contact\nfracture_ascertained_until: last_contact\n":
            [("fractures_ascertained_until", "required"), ("fracture_ascertained_until", "unknown field")],
        "- just a list\n": [("-", "must be a mapping")],
        "data_cut: [2024\n": [("-", "not valid YAML")],
    }
    for text, expected in cases.items():
        (tmp_path / "export.yaml").write_text(text)
        with pytest.raises(RawDataError) as err:
            read_export_metadata(tmp_path)
        got = sorted((v.column, v.message) for v in err.value.violations)
        assert [v.table for v in err.value.violations] == ["export.yaml"] * len(expected), text
        assert len(got) == len(expected), (text, got)
        for (column, message), (want_column, want_text) in zip(got, sorted(expected)):
            assert column == want_column and want_text in message, (text, got)


def test_dates_after_the_stated_data_cut_are_named_by_table_row_and_column(raw):
    tables = validate_raw(raw)
    asc = Ascertainment("data_cut", "death_or_data_cut", date(2023, 4, 1), "export.yaml")
    with pytest.raises(RawDataError) as err:
        checked(asc, tables)
    found = {(v.table, v.row, v.column) for v in err.value.violations}
    assert found == {("patients", "B2", "last_followup_date"), ("patients", "C3", "last_followup_date"),
                     ("events", "E4", "event_date")}
    assert "after the data cut 2023-04-01 stated in export.yaml" in err.value.violations[0].message
    assert checked(asc.__class__("data_cut", "death_or_data_cut", date(2023, 6, 1), "export.yaml"), tables)


def test_a_fracture_after_death_is_refused(raw):
    raw["patients"].loc[raw["patients"]["patient_id"] == "C3", ["death_date", "last_followup_date"]] = \
        ["2021-10-01", "2021-10-01"]
    with pytest.raises(RawDataError) as err:
        validate_raw(raw)
    assert [(v.table, v.row, v.column) for v in err.value.violations] == [("events", "E3", "event_date")]
    assert "after the patient's death (2021-10-01)" in err.value.violations[0].message


def test_a_fracture_after_the_last_contact_counts_only_when_fractures_were_followed_further(raw):
    """A1's refracture (2021-06-01) comes after a last contact of 2021-05-01: outside the
    window of an export that ascertained fractures until the last contact (censored there,
    as every other patient's unknown later fractures are), inside one that followed them to
    the data cut."""
    raw["patients"].loc[raw["patients"]["patient_id"] == "A1", "last_followup_date"] = "2021-05-01"
    tables = validate_raw(raw)
    until_contact = build_labels(tables)
    assert until_contact.loc["A1-1", "cemented_refracture_status"] == 0
    assert until_contact.loc["A1-1", "cemented_refracture_time_days"] == (pd.Timestamp("2021-05-01") - pd.Timestamp("2021-01-10")).days
    assert any("1 fractures recorded after the patient's last contact are not counted" in n
               for n in followup_notes(resolve(None, tables), tables))
    followed = build_labels(tables, ascertainment=REGISTRY)
    assert followed.loc["A1-1", "cemented_refracture_status"] == 1
    assert followed.loc["A1-1", "cemented_refracture_time_days"] == 142
