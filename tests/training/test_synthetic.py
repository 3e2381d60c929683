"""training/synthetic.py: a deterministic, clearly synthetic DICOM set with a learnable two-class signal."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pydicom
import pytest
import torch
import torch.nn as nn

from training import synthetic
from training.dataset.dicom import load_image
from training.dataset.loader import BatchLoader
from training.dataset.prepare import DataOptions, prepare


@pytest.fixture(scope="module")
def forty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[synthetic.SyntheticImage]]:
    root = tmp_path_factory.mktemp("synthetic") / "set"
    return root, synthetic.generate(root, count=40, size=64, seed=11)


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path, forty: tuple[Path, list]) -> None:
    root, written = forty
    again = tmp_path / "again"
    assert synthetic.generate(again, count=40, size=64, seed=11) == written
    for image in written:
        assert (again / image.file).read_bytes() == (root / image.file).read_bytes(), image.file
    other = tmp_path / "other"
    synthetic.generate(other, count=40, size=64, seed=12)
    first = written[0].file
    assert (other / first).read_bytes() != (root / first).read_bytes()


def test_contents_are_realistic_and_clearly_synthetic(forty: tuple[Path, list]) -> None:
    root, written = forty
    assert Counter(image.label for image in written) == {"normal": 20, "abnormal": 20}
    assert len({image.patient_id for image in written}) == 10
    datasets = [pydicom.dcmread(root / image.file) for image in written]
    assert len({ds.StudyInstanceUID for ds in datasets}) == 20  # two studies a patient
    syntaxes = Counter(ds.file_meta.TransferSyntaxUID.name for ds in datasets)
    assert set(syntaxes) == {
        "Explicit VR Little Endian",
        "RLE Lossless",
        "JPEG 2000 Image Compression (Lossless Only)",
    }
    assert {ds.PhotometricInterpretation for ds in datasets} == {"MONOCHROME1", "MONOCHROME2"}
    assert any(not image.file.endswith(".dcm") for image in written)
    for ds in datasets:
        assert str(ds.PatientName).startswith("SYNTHETIC^PATIENT^") and ds.PatientID.startswith("SYN-")
        assert ds.BurnedInAnnotation == "NO" and ds.PatientIdentityRemoved == "YES"
        assert "SYNTHETIC" in ds.StudyDescription and "SYNTHETIC" in ds.SeriesDescription
        assert "SYNTHETIC" in ds.ImageComments and ds.PatientID not in str(ds.filename)
        if ds.Modality == "CT":
            assert (ds.RescaleIntercept, ds.RescaleSlope, ds.PixelRepresentation) == (-1024, 1, 1)
            assert (ds.WindowCenter, ds.WindowWidth) == (40, 400) and ds.BitsAllocated == 16
        else:
            assert ds.Modality == "CR" and ds.PixelRepresentation == 0 and ds.BitsStored == 12


@pytest.mark.parametrize("size", [256, 512])
def test_sizes(tmp_path: Path, size: int) -> None:
    written = synthetic.generate(tmp_path, count=4, size=size)
    ds = pydicom.dcmread(tmp_path / written[0].file)
    assert (ds.Rows, ds.Columns) == (size, size)
    assert load_image(tmp_path / written[0].file, image_size=(96, 96)).shape == (1, 96, 96)


def test_first_patient_offsets_the_identities(tmp_path: Path) -> None:
    written = synthetic.generate(tmp_path, count=8, size=64, first_patient=101)
    assert sorted({image.patient_id for image in written}) == ["SYN-0101", "SYN-0102"]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"count": 3}, "count"), ({"count": 8, "size": 32}, "size"), ({"count": 8, "label_format": "xml"}, "format")],
)
def test_arguments_are_checked(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synthetic.generate(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    args = synthetic.parse_args([str(out), "--count", "6", "--format", "groundtruth", "--seed", "2", "--size", "64"])
    assert synthetic.main(args) == 0
    assert (out / "output.manifest").exists()
    assert synthetic.main(args) == 2  # never writes into a directory that holds files
    assert "is not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_a_small_network_learns_the_classes(tmp_path: Path) -> None:
    synthetic.generate(tmp_path, count=200, size=128, seed=3)
    data = prepare({"train": tmp_path}, DataOptions(image_size=(48, 48)))
    torch.manual_seed(0)

    def block(channels_in: int, channels_out: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels_out, momentum=0.5),  # running statistics that keep up within few steps
            nn.ReLU(),
            nn.MaxPool2d(2),
        )

    model = nn.Sequential(
        block(1, 8), block(8, 16), block(16, 32), block(32, 32), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 2)
    )
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    train = BatchLoader(data.train, batch_size=32, shuffle=True, augment=0.0, seed=0)
    for epoch in range(4):
        train.set_epoch(epoch)
        model.train()
        for images, labels in train:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        images, labels = next(iter(BatchLoader(data.validation, batch_size=1000, shuffle=False, augment=0, seed=0)))
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.95
