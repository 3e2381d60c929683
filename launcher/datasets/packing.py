"""Pack DICOM files into zips for batch transform: several files an object, so several files a request.

SageMaker's batch transform sends each S3 object as one request (BatchStrategy SingleRecord: DICOM cannot be split
into records), and the server (training/inference.py predict_fn) runs a request's files through the network a batch
(the model's batch size) at a time: one file an object means one forward pass a file. `pack` groups files into zips of
up to files_per_object, each within what one request may carry: its members (training.inference.MAX_ZIP_MEMBERS), its
pixels from the headers (MAX_REQUEST_PIXELS) and its bytes (batch transform's payload). Headers are read without
pixels; pydicom's warnings, which may quote element values, are silenced.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MEMBER_OVERHEAD = 1024  # bytes a member may add to a zip beyond its file (headers, and deflate's worst case)


def pack(names: Mapping[str, str], workdir: Path, *, files_per_object: int,
         max_object_bytes: int) -> tuple[dict[str, Path], dict[str, str]]:
    """Write the files into workdir/batch-00001.zip, ...; members named as in `names`.

    Args:
        names: member name (the file's path below the files' common folder) to the local file, in order.
        workdir: where the zips are written.
        files_per_object: the most files a zip holds, 1 to MAX_ZIP_MEMBERS.
        max_object_bytes: the largest zip (batch transform's payload).

    Returns:
        (zip name to its path, "ZIP/MEMBER" to the local file).

    Raises:
        ValueError: files_per_object out of range, or a file that alone passes a request's pixels or bytes (named).
    """
    from training.serving.request import MAX_ZIP_MEMBERS

    if not 1 <= files_per_object <= MAX_ZIP_MEMBERS:
        raise ValueError(f"files_per_object must be 1 to {MAX_ZIP_MEMBERS} (training.inference.MAX_ZIP_MEMBERS, "
                         f"the files a request may hold); got {files_per_object}")
    zips: dict[str, Path] = {}
    members: dict[str, str] = {}
    for number, group in enumerate(groups(names, files_per_object, max_object_bytes), 1):
        name = f"batch-{number:05d}.zip"
        zips[name] = workdir / name
        with zipfile.ZipFile(zips[name], "w", zipfile.ZIP_DEFLATED) as archive:
            for member in group:
                archive.write(names[member], member)
                members[f"{name}/{member}"] = names[member]
    return zips, members


def groups(names: Mapping[str, str], files_per_object: int, max_object_bytes: int) -> list[list[str]]:
    """Member names in order, in groups of at most files_per_object, each within a request's pixels and bytes."""
    from training.dataset.dicom import frame_samples
    from training.serving.request import MAX_REQUEST_PIXELS

    result: list[list[str]] = [[]]
    pixels = size = 0
    for member, path in names.items():
        cost, bytes_ = frame_samples(_header(path), member), Path(path).stat().st_size + MEMBER_OVERHEAD
        if cost > MAX_REQUEST_PIXELS or bytes_ > max_object_bytes:
            raise ValueError(f"{path}: {cost} pixels and {bytes_} bytes, over a request's {MAX_REQUEST_PIXELS} "
                             f"pixels (training.inference.MAX_REQUEST_PIXELS) or {max_object_bytes} bytes")
        full = len(result[-1]) == files_per_object
        if full or pixels + cost > MAX_REQUEST_PIXELS or size + bytes_ > max_object_bytes:
            result.append([])
            pixels = size = 0
        result[-1].append(member)
        pixels, size = pixels + cost, size + bytes_
    return result


def _header(path: str) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings():  # validation warnings may quote values (a patient's name): not in our output
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            raise ValueError(f"{path} is not a DICOM Part 10 file: only DICOM files are packed") from None
