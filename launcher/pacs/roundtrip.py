"""The PACS round trip as the notebook and the command line use it: `pull` (with labels) and `push`, either transport.

A PACS is named by one string: its DICOMweb root (`http://host:8042/dicom-web`, `https://...`), or `HOST:PORT:AET`
for DIMSE (`source_of`). Then

    pulled = pull(PACS, DATA_DIR / "train", key=key, labels="train-labels.csv")   # OUT, OUT.link.jsonl, labels.csv
    pushed = push(PACS, predictions, model=results.model_dir, link_path=pulled.link)

`pull` with `labels` resolves every row of the CSV on the PACS first (launcher/pacs/labels.py: a row naming no study
stops it before anything is pulled), pulls exactly the labelled studies (plus any `studies` named), and writes
OUT/labels.csv, so OUT is a channel `python -m training.check OUT` accepts as it is. Without labels, OUT is an
unlabeled set for prediction. The link file goes next to OUT by default (`default_link_path`), outside what gets
uploaded. `push` sends predictions (training.predict's JSON, or the notebook's Predictor results) back as DICOM SR
(launcher/pacs/push.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from launcher.pacs.deidentify import Deidentifier
from launcher.pacs.dimse import DimseAddress, pull_dimse
from launcher.pacs.intake import PullReport
from launcher.pacs.labels import LabelsReport, read_study_labels, resolve_studies, write_labels_csv
from launcher.pacs.pull import find_studies, pull_dicomweb
from launcher.pacs.push import PushReport, push_predictions
from launcher.pacs.sr import ModelIdentity
from training.dataset.pseudonym_key import load_key

__all__ = ["Pulled", "default_link_path", "pull", "pull_channels", "push", "source_of"]


def default_link_path(out: str | Path) -> Path:
    """The link file a pull writes by default: next to OUT, as OUT.link.jsonl."""
    out = Path(out).resolve()
    return out.parent / f"{out.name}.link.jsonl"


def source_of(text: str | DimseAddress) -> str | DimseAddress:
    """A DICOMweb root (http:// or https://) as it is, else a DIMSE address `HOST:PORT:AET`.

    Raises:
        ValueError: neither (the message gives both shapes).
    """
    if isinstance(text, DimseAddress) or text.startswith(("http://", "https://")):
        return text
    try:
        return DimseAddress.parse(text)
    except ValueError:
        raise ValueError("a PACS is its DICOMweb root (http://host:8042/dicom-web) or HOST:PORT:AET for DIMSE "
                         "(e.g. pacs.example.org:104:PACS)") from None


@dataclass
class Pulled:
    """What `pull` did: the channel folder, its link file, the pull's report and, with labels, what labels.csv holds."""

    out: Path
    link: Path
    report: PullReport
    labels: LabelsReport | None = None

    def summary(self, name: str) -> str:
        """One line for the notebook: what was pulled, kept, refused and labelled (no identifier)."""
        report = self.report
        text = (f"{name}: {report.written} files pulled, {report.skipped} already here, {len(report.refused)} "
                f"refused (burned-in text and the like)")
        if self.labels is not None:
            text += f"; labels.csv lists {self.labels.files} files of {self.labels.studies} studies"
            if self.labels.rows_without_files:
                text += f" (CSV rows {self.labels.rows_without_files} gave no file)"
        return text


def pull(source: str | DimseAddress, out: str | Path, *, key: bytes, labels: str | Path | None = None,
         link_path: str | Path | None = None, studies: Iterable[str] = (), query: Mapping[str, str] | None = None,
         move_to: str | None = None, **options: Any) -> Pulled:
    """Pull studies from the PACS into `out`, de-identified; with `labels`, the labelled studies and OUT/labels.csv.

    Args:
        source: the PACS (`source_of`).
        out: the channel folder to write; `link_path` (default `default_link_path(out)`) gets the link records.
        key: the deployment's pseudonym key (launcher.notebook.fetch_pseudonym_key gives its file).
        labels: a CSV of StudyInstanceUID or AccessionNumber, and label (launcher/pacs/labels.py).
        studies, query: what to pull (without labels: the query's studies, or all); not `query` with `labels`.
        move_to: DIMSE only: "AET:PORT" to retrieve with C-MOVE to a storage SCP started here; else C-GET.
        options: the transport's pull options (workers, timeout_s, retries, allow_burned_in, progress, ...).

    Raises:
        launcher.pacs.labels.LabelsError: the CSV cannot be used or names studies the PACS does not hold (by row).
        launcher.pacs.intake.PullError, launcher.pacs.deidentify.LinkFileError: as the transport's pull.
        ValueError: `query` with `labels`, `move_to` over DICOMweb, a source of neither shape.
    """
    source = source_of(source)
    out, link = Path(out), Path(link_path) if link_path else default_link_path(out)
    studies = list(studies)
    labelled = []
    if labels is not None:
        if query:
            raise ValueError("a pull takes labels or a query, not both: the labels CSV names the studies to pull")
        labelled = resolve_studies(read_study_labels(labels), lambda filters: find_studies(source, filters))
        studies += [study.study_uid for study in labelled if study.study_uid not in studies]
    common = dict(key=key, link_path=link, studies=studies, query=query, **options)
    if isinstance(source, DimseAddress):
        report = pull_dimse(source, out, move_to=move_to, **common)
    elif move_to:
        raise ValueError("move_to is for a pull over DIMSE (HOST:PORT:AET), not DICOMweb")
    else:
        report = pull_dicomweb(source, out, **common)
    written = write_labels_csv(out, labelled, Deidentifier(key).pseudonym_uid) if labels is not None else None
    return Pulled(out, link, report, written)


def push(source: str | DimseAddress, predictions: str | Path | Mapping[str, Any] | Sequence[Any], *,
         model: str | Path | ModelIdentity, link_path: str | Path, **options: Any) -> PushReport:
    """Push predictions back to the PACS as DICOM SR in the original studies (launcher/pacs/push.py).

    `predictions`: training.predict's JSON (a file, or parsed), or the notebook's Predictor results.
    """
    source = source_of(source)
    if not isinstance(predictions, str | Path | Mapping):
        predictions = {"predictions": [_as_json(p) for p in predictions]}
    if isinstance(source, DimseAddress):
        return push_predictions(predictions, link_path=link_path, model=model,
                                dimse=(source.host, source.port, source.called_aet), **options)
    return push_predictions(predictions, link_path=link_path, model=model, dicomweb=source, **options)


def _as_json(prediction: Any) -> Any:
    """A training.inference Prediction (of a pulled file) as output_fn writes it, its SOPInstanceUID read from the
    file's header; a mapping as it is."""
    if isinstance(prediction, Mapping):
        return prediction
    header = pydicom.dcmread(prediction.file, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    return {"file": prediction.file, "SOPInstanceUID": str(header.get("SOPInstanceUID", "")),
            "label": prediction.label, "probabilities": dict(prediction.probabilities)}


def pull_channels(source: str | DimseAddress, labels: Mapping[str, str | Path], data_dir: str | Path, *,
                  key_file: str | Path, links_dir: str | Path, **options: Any) -> dict[str, Pulled]:
    """The notebook's pull: each channel (e.g. "train", "test") from its labels CSV into data_dir/<channel>.

    The link files go to `links_dir` (owner-only), which must lie outside `data_dir`: data_dir is what gets uploaded.

    Raises:
        ValueError: `links_dir` inside `data_dir`; and what `pull` raises.
    """
    data_dir, links_dir = Path(data_dir), Path(links_dir)
    if links_dir.resolve() == data_dir.resolve() or data_dir.resolve() in links_dir.resolve().parents:
        raise ValueError(f"the link files' folder {links_dir} is inside {data_dir}, which gets uploaded: keep it out")
    links_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = load_key(key_file)
    return {channel: pull(source, data_dir / channel, key=key, labels=csv_file,
                          link_path=links_dir / f"{channel}.link.jsonl", **options)
            for channel, csv_file in labels.items()}
