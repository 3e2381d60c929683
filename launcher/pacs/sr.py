"""A model's prediction as a DICOM Structured Report in the original study (issue 20 item 4): what a push stores.

`ModelIdentity.from_bundle(MODEL_DIR)` reads the bundle's name and version (configs/metadata.json, as data) and the
sha256 of its weights (models/model.pt). `classification_sr(evidence, label=..., probability=..., model=...)` makes,
with highdicom, a Comprehensive 3D SR whose patient and study modules are copied from `evidence` (the ORIGINAL
instance's metadata, fetched from the PACS, never our pseudonyms), in a new series of that study:

    Imaging Measurement Report (TID 1500)
      Observer: a Device (UID derived from the weights' sha256, name and model name = the bundle's name)
      Procedure reported: Imaging procedure
      Imaging Measurements / Measurement Group
        Tracking identifier, Algorithm (name, version, parameter "sha256:<weights>")
        Source image for measurement group: the original instance (SOP class and instance UID)
        Finding (DCM 121071) = the predicted label (code in the local scheme 99MDS, meaning = the label)
        Probability (DCM 122157) = p, unit {probability} (UCUM)

Idempotent: the SR's SOPInstanceUID is derived from the original instance UID, the weights' sha256 and the label, and
its SeriesInstanceUID from the original study UID and the sha256, so the same prediction pushed twice is the same
instance (a PACS keeps one), and one model's results in one study are one series. Nothing here logs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from launcher.datasets.checksums import sha256_file
from launcher.pacs.validation import no_value_validation

__all__ = ["MANUFACTURER", "BundleIdentityError", "ModelIdentity", "classification_sr", "sr_uids"]

MANUFACTURER = "monai-dicom-sagemaker"
SERIES_NUMBER = 9901  # high, so that a viewer lists the results after the acquired series
LABEL_SCHEME = "99MDS"  # a local coding scheme (PS3.16: designators beginning with 99 are private)
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
PROBABILITY_UNIT = hd.sr.CodedConcept("{probability}", "UCUM", "probability")
MAX_METADATA_BYTES = 1 << 20
MAX_TEXT = 64  # LO: a name or version in the SR
# The Patient and General Study attributes highdicom reads from the evidence (type 2: present, possibly empty).
TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
         "StudyTime", "ReferringPhysicianName")


class BundleIdentityError(ValueError):
    """A bundle whose name, version or weights cannot identify the model in an SR."""


@dataclass(frozen=True)
class ModelIdentity:
    """What an SR says of the model: the bundle's name and version, and the sha256 (hex) of models/model.pt."""

    name: str
    version: str
    sha256: str

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path) -> ModelIdentity:
        """Read configs/metadata.json's "name" and "version" (plain JSON, nothing evaluated) and hash the weights.

        Raises:
            BundleIdentityError: a file missing or unreadable, a field not a short printable text.
        """
        root = Path(bundle_dir)
        meta_file, weights = root / "configs" / "metadata.json", root / "models" / "model.pt"
        try:
            if meta_file.stat().st_size > MAX_METADATA_BYTES:
                raise BundleIdentityError(f"{meta_file} is over {MAX_METADATA_BYTES} bytes: is it a bundle's?")
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            digest = sha256_file(weights).hex()
        except (OSError, UnicodeDecodeError, ValueError) as error:
            if isinstance(error, BundleIdentityError):
                raise
            raise BundleIdentityError(f"bundle {root} cannot be read ({type(error).__name__}): pass the model "
                                      "directory (configs/metadata.json, models/model.pt)") from None
        fields = [meta.get(key) if isinstance(meta, dict) else None for key in ("name", "version")]
        for key, value in zip(("name", "version"), fields, strict=True):
            if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT or not value.isprintable():
                raise BundleIdentityError(f"{meta_file}: field {key!r} must be a printable text of 1 to {MAX_TEXT} "
                                          "characters")
        name, version = (str(value) for value in fields)
        return cls(name=name, version=version, sha256=digest)

    @property
    def device_uid(self) -> str:
        """The observer device's UID: one per set of weights."""
        return _derived("device", self.sha256)


def _derived(kind: str, *parts: str) -> str:
    """A UID made from `parts` (pydicom's generate_uid over their SHA-512): the same parts, the same UID."""
    return str(generate_uid(entropy_srcs=[f"monai-dicom-sagemaker/{kind}", *parts]))


def sr_uids(*, study_uid: str, sop_instance_uid: str, model: ModelIdentity, label: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SR for this prediction: the same on every push."""
    return _derived("sr-series", study_uid, model.sha256), _derived("sr", sop_instance_uid, model.sha256, label)


def classification_sr(evidence: Dataset, *, label: str, probability: float, model: ModelIdentity
                      ) -> hd.sr.Comprehensive3DSR:
    """The SR of one prediction for the original instance `evidence` (its metadata: SOP class and instance, series,
    study and patient modules; a missing type 2 attribute highdicom reads is taken as empty), in its study. pydicom's
    value validation is off meanwhile: its warnings quote values.

    Raises:
        ValueError: a probability outside [0, 1], or a label that is not a short printable text.
    """
    if not (isinstance(probability, float | int) and math.isfinite(probability) and 0 <= probability <= 1):
        raise ValueError("a probability is a number from 0 to 1")
    if not label.strip() or len(label) > MAX_TEXT or not label.isprintable():
        raise ValueError(f"a label is a printable text of 1 to {MAX_TEXT} characters")
    with no_value_validation():
        evidence = Dataset(evidence)  # a shallow copy: the caller's keeps its elements
        for keyword in TYPE2:
            if keyword not in evidence:
                setattr(evidence, keyword, "")
        series_uid, sop_uid = sr_uids(study_uid=str(evidence.StudyInstanceUID),
                                      sop_instance_uid=str(evidence.SOPInstanceUID), model=model, label=label)
        return hd.sr.Comprehensive3DSR(
            evidence=[evidence], content=_report(evidence, label=label, probability=float(probability), model=model),
            series_instance_uid=series_uid, series_number=SERIES_NUMBER, sop_instance_uid=sop_uid, instance_number=1,
            manufacturer=MANUFACTURER, manufacturer_model_name=model.name, software_versions=model.version,
            series_description=f"{model.name} {model.version}"[:MAX_TEXT], is_complete=True)


def _report(evidence: Dataset, *, label: str, probability: float, model: ModelIdentity) -> hd.sr.MeasurementReport:
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=model.device_uid, name=model.name,
                                                       manufacturer_name=MANUFACTURER, model_name=model.name)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="classification", uid=_derived(
            "tracking", str(evidence.SOPInstanceUID), model.sha256)),
        algorithm_id=hd.sr.AlgorithmIdentification(name=model.name, version=model.version,
                                                   parameters=[f"sha256:{model.sha256}"]),
        source_images=[hd.sr.SourceImageForMeasurementGroup(str(evidence.SOPClassUID), str(evidence.SOPInstanceUID))],
        finding_type=hd.sr.CodedConcept(label, LABEL_SCHEME, label),
        measurements=[hd.sr.Measurement(name=PROBABILITY, value=probability, unit=PROBABILITY_UNIT)],
    )
    return hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.SCT.ImagingProcedure,
                                   imaging_measurements=[group])
