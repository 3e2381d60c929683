"""What an attacker can compute from a list of patient IDs: the values no output of ours may hold (issue 17).

Before keyed pseudonyms, a patient was named `p-` and 16 hex digits of SHA-256 over a public salt, a kind and the ID;
anyone with a list of record numbers recomputes those. A plain SHA-256 of the ID is as guessable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

OLD_SALT = "monai-dicom-sagemaker/patient-hash/v1"  # the public default salt of the old scheme


def guessable(patient_ids: Iterable[str]) -> list[str]:
    """The old scheme's pseudonyms (each kind it used) and plain SHA-256 digests (whole and shortened) of the IDs."""
    out = []
    for value in patient_ids:
        for kind in ("patient", "study", "file"):
            out.append("p-" + hashlib.sha256(f"{OLD_SALT}\x1f{kind}\x1f{value}".encode()).hexdigest()[:16])
        digest = hashlib.sha256(value.encode()).hexdigest()
        out += [digest, digest[:16]]
    return out
