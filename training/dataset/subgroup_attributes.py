"""The non-identifying DICOM attributes test metrics are broken down by (issue 22 item 4), read from each file's
header with the identifiers the split needs (training/dataset/dicom.py read_header).

The attributes are those a reviewer asks about first: Manufacturer, ManufacturerModelName, Modality, BodyPartExamined,
PatientSex, and PatientAge as a band (`age_band`: under 18, 18-39, 40-59, 60-79, 80 and over; an exact age is never
kept, and ages over 89 are an identifier under HIPAA's safe harbour). A value absent or blank is "unknown". Values are
free text written by scanners: each is stripped, bounded to MAX_VALUE characters and kept only when printable, else
"unknown". Groups too small to report are pooled by the report (training/job/subgroups.py), so a rare value never
stands alone in metrics.json or the model card.
"""

from __future__ import annotations

import re
from typing import Any

SUBGROUP_ATTRIBUTES = ("Manufacturer", "ManufacturerModelName", "Modality", "BodyPartExamined", "PatientSex",
                       "PatientAge")
UNKNOWN = "unknown"
MAX_VALUE = 64  # the longest value kept (DICOM's LO is 64 characters)
AGE_BANDS = ((18, "<18"), (40, "18-39"), (60, "40-59"), (80, "60-79"))  # (below, name); then "80+"
_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_DAYS_PER_YEAR = {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}


def age_band(text: str) -> str:
    """PatientAge (AS: nnnD, nnnW, nnnM or nnnY) as its band; UNKNOWN when absent or malformed."""
    match = _AGE.match(text.strip().upper())
    if not match:
        return UNKNOWN
    years = int(match.group(1)) / _DAYS_PER_YEAR[match.group(2)]
    return next((name for below, name in AGE_BANDS if years < below), "80+")


def subgroup_values(ds: Any) -> tuple[str, ...]:
    """A dataset's values of SUBGROUP_ATTRIBUTES, in order (PatientAge as its band).

    Args:
        ds: a pydicom Dataset read with (at least) SUBGROUP_ATTRIBUTES.
    """
    values = []
    for name in SUBGROUP_ATTRIBUTES:
        text = str(ds.get(name, "") or "").strip()  # Dataset.get by keyword gives the value
        if name == "PatientAge":
            values.append(age_band(text))
        elif text and len(text) <= MAX_VALUE and text.isprintable():
            values.append(text)
        else:
            values.append(UNKNOWN)
    return tuple(values)


def as_mapping(values: tuple[str, ...]) -> dict[str, str]:
    """The values by attribute name ({} -> every attribute UNKNOWN)."""
    padded = values if len(values) == len(SUBGROUP_ATTRIBUTES) else (UNKNOWN,) * len(SUBGROUP_ATTRIBUTES)
    return dict(zip(SUBGROUP_ATTRIBUTES, padded, strict=True))
