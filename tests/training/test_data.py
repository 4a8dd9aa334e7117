"""What training reads beside the tables: ``export.yaml`` decides the labels, so it is part
of the data's fingerprint, and the ascertainment it states (or the default) is recorded
with every run and registered version (``training.pipeline.run_tags``), with the notes a
reader needs (deaths after the last contact that do not compete)."""

from __future__ import annotations

import pandas as pd

from training.config import TrainConfig
from training.data import prepare
from training.pipeline import run_tags
from training.provenance import data_fingerprint


def test_export_yaml_decides_the_labels_and_is_recorded(raw_dir):
    patients = pd.read_csv(raw_dir / "patients.csv", dtype=str)
    patients.loc[patients["patient_id"] == "B2", "death_date"] = "2023-06-20"  # a registry death after the last visit
    patients.to_csv(raw_dir / "patients.csv", index=False)
    cfg = TrainConfig(raw_dir=raw_dir, register=False)
    before = data_fingerprint(raw_dir)
    default = prepare(cfg)
    tags = run_tags(cfg, default, "adjacent_fracture")
    assert (tags["deaths_ascertained_until"], tags["fractures_ascertained_until"], tags["ascertainment_source"]) == \
        ("data_cut", "last_contact", "default")
    assert tags["data_cut"] == "2023-06-20 (inferred)"
    assert len(default.followup_notes) == 2 and "do not compete" in default.followup_notes[1]
    assert default.training_set.loc["B2-1", "remote_fracture_status"] == 0  # the death does not compete

    (raw_dir / "export.yaml").write_text("site: Hospital B\ndata_cut: 2023-06-30\ndeaths_ascertained_until: data_cut\n"
                                         "fractures_ascertained_until: death_or_data_cut\n")
    assert data_fingerprint(raw_dir) != before
    stated = prepare(cfg)
    tags = run_tags(cfg, stated, "adjacent_fracture")
    assert (tags["fractures_ascertained_until"], tags["data_cut"], tags["ascertainment_source"]) == \
        ("death_or_data_cut", "2023-06-30", "export.yaml")
    assert stated.followup_notes == ()
    assert stated.training_set.loc["B2-1", "remote_fracture_status"] == 2  # death first
    assert stated.training_set.loc["B2-1", "adjacent_fracture_status"] == 1  # B2's fracture, 2023-05-01
    assert stated.training_set.loc["B2-1", "death_status"] == 1
