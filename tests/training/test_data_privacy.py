"""Privacy: no PatientID or PatientName reaches anything the data layer prints, logs, raises or writes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.training.dicom_builders import gradient, truncate, write_image, write_labels_csv, write_structured_report
from training import check
from training.dataset.prepare import DataError, DataOptions, prepare

# Distinctive identifiers; the 70-character name breaks PN's 64-character limit, so pydicom warns about it (and
# would quote it, were its records let through).
PATIENTS = [(f"PID-SECRET-{i:04d}", f"DOE^JANE{i}^SECRETNAME^{'X' * 50}") for i in range(6)]


def _channel(root: Path, *, blank_ids: bool = False) -> None:
    """Twelve images of six patients, one truncated, one structured report, one listed but missing."""
    rows = []
    for index in range(12):
        patient_id, name = PATIENTS[index // 2]
        file = f"series{index % 3}/im{index}.dcm"
        write_image(root / file, gradient(), patient_id="" if blank_ids else patient_id, patient_name=name)
        rows.append((file, ("normal", "abnormal")[index % 2]))
    truncate(root / rows[5][0])
    write_structured_report(root / "sr.dcm", patient_id=PATIENTS[0][0], patient_name=PATIENTS[0][1])
    write_labels_csv(root, [*rows, ("sr.dcm", "normal"), ("missing.dcm", "abnormal")])


def _secrets() -> list[str]:
    values = []
    for patient_id, name in PATIENTS:
        values += [patient_id, name, *[part for part in name.split("^") if len(part) >= 4]]
    return values


@pytest.mark.filterwarnings("error")  # a warning would reach stderr, and pydicom's quote element values
def test_nothing_printed_logged_raised_or_written_names_a_patient(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    train, blank, other = tmp_path / "train", tmp_path / "blank", tmp_path / "validation"
    _channel(train)
    _channel(blank, blank_ids=True)
    _channel(other)  # the same patients: an overlap error
    out = tmp_path / "output"
    texts = []
    with caplog.at_level(logging.DEBUG):
        data = prepare({"train": train}, DataOptions(image_size=(16, 16), on_bad_file="skip"), output_dir=out)
        texts.append(json.dumps(data.summary))
        texts.append(json.dumps(data.bad_files) + " ".join(data.train.patients + data.validation.patients))
        prepare({"train": blank}, DataOptions(image_size=(16, 16), on_bad_file="skip"), output_dir=out / "b")
        for channels, options in [
            ({"train": train}, DataOptions(image_size=(16, 16))),
            ({"train": train, "validation": other}, DataOptions(image_size=(16, 16), on_bad_file="skip")),
        ]:
            with pytest.raises(DataError) as caught:
                prepare(channels, options)
            texts.append(str(caught.value))
        assert check.main(check.parse_args([str(train)])) == 1
        assert check.main(check.parse_args([str(train), "--json"])) == 1
        assert check.main(check.parse_args([str(train), "--validation", str(other)])) == 2
    captured = capfd.readouterr()
    texts += [captured.out, captured.err, caplog.text]
    texts += [path.read_text() for path in out.rglob("*") if path.is_file()]
    assert "sr.dcm" in captured.out and "patient(s) appear in more than one channel" in captured.out
    assert (out / "bad_files.json").exists() and (out / "b" / "bad_files.json").exists()
    everything = "\n".join(texts)
    leaked = [secret for secret in _secrets() if secret in everything]
    assert leaked == []
