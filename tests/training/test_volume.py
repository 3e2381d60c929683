"""training/dataset/volume.py: assembled series decoded into oriented, resampled uint8 volumes, on synthetic series
written in random order under random names and on real DICOM (pydicom's dicomdirtests CT5N, pydicom-data's enhanced
multi-frame files)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.training.dicom_builders import pydicom_data_dir
from training import synthetic
from training.dataset import volume as volume_module
from training.dataset.series import Series, assemble
from training.dataset.volume import Volume, VolumeError, read_volume

CT5N = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
LESION_WINDOW = (320.0, 100.0)  # the lesion and the cone (320 HU) at 0.5; bone (700 HU) saturates, soft tissue is 0
LESION_BAND = (0.3, 0.7)


def _series(root: Path) -> dict[str, Series]:
    report = assemble(sorted(p for p in root.rglob("*.dcm")), root=root)
    assert report.bad == []
    return {s.location: s for s in report.series}


@pytest.fixture(scope="module")
def lesion_series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Series]:
    """8 CT series of 24 slices, 48 x 48, slice spacing 1, 1.5 or 2 times the pixel spacing; folders per class."""
    root = tmp_path_factory.mktemp("volume") / "lesion"
    synthetic.generate_volumes(root, count=8, slices=24, size=48, label_format="folders", seed=5)
    return _series(root)


@pytest.fixture(scope="module")
def order_series(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, list[tuple[str, Series]]]:
    """The order-only set and its scrambled control: (label, series), keyed by `scrambled`."""
    sets = {}
    for scrambled in (False, True):
        root = tmp_path_factory.mktemp("volume") / f"order-{scrambled}"
        written = synthetic.generate_volumes(root, count=8, slices=12, size=32, seed=9, order_only=True,
                                             scramble_positions=scrambled)
        found = _series(root)
        sets[scrambled] = [(s.label, found[s.folder]) for s in written]
    return sets


def _source_lesion(series: Series) -> np.ndarray:
    """The lesion voxels' positions (N, 3) in LPS mm, from the files alone (pydicom, the stored HU, positions)."""
    points = []
    for ref in series.slices:
        ds = pydicom.dcmread(ref.file)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        rows, columns = np.nonzero((hu > 250) & (hu < 450))
        x0, y0, z = (float(v) for v in ds.ImagePositionPatient)
        step = [float(v) for v in ds.PixelSpacing]
        points += [(x0 + c * step[1], y0 + r * step[0], z) for r, c in zip(rows, columns, strict=True)]
    return np.array(points).reshape(-1, 3)


def _lesion_voxels(volume: Volume) -> np.ndarray:
    """Voxels (N, 3) of the lesion band that are not there at most depths (the spine is there at every depth)."""
    unit = volume.array / 255.0
    band = ((unit > LESION_BAND[0]) & (unit < LESION_BAND[1])).astype(np.float32)
    return np.argwhere(band - np.median(band, axis=0, keepdims=True) > 0)


def _volume_lesion(volume: Volume) -> np.ndarray:
    """The lesion voxels' positions (N, 3) in LPS mm, through the volume's affine."""
    voxels = _lesion_voxels(volume)
    return (np.c_[voxels, np.ones(len(voxels))] @ volume.affine.T)[:, :3]


def test_the_lesion_lands_where_it_is_in_physical_space(lesion_series: dict[str, Series]) -> None:
    for location, series in lesion_series.items():
        volume = read_volume(series, size=(32, 48, 48), window=LESION_WINDOW)
        assert volume.array.shape == (32, 48, 48) and volume.array.dtype == np.uint8
        found, truth = _volume_lesion(volume), _source_lesion(series)
        if location.startswith("normal/"):
            assert len(found) == 0 == len(truth), location
            continue
        assert len(found) >= 5 and len(truth) >= 5, location
        error = np.abs(found.mean(axis=0) - truth.mean(axis=0))
        assert np.all(error < 0.5 * volume.spacing), (location, error, volume.spacing)


def test_anisotropic_spacing_is_respected_a_sphere_stays_a_sphere(lesion_series: dict[str, Series]) -> None:
    abnormal = [s for location, s in lesion_series.items() if location.startswith("abnormal/")]
    stretched = [s for s in abnormal if s.pixel_spacing and s.slice_spacing > 1.9 * s.pixel_spacing[0]]
    assert stretched, "the seed gives at least one abnormal series with slices twice as far apart as pixels"
    for series in stretched:
        volume = read_volume(series, size=(64, 96, 96), window=LESION_WINDOW)
        in_voxels = _lesion_voxels(volume).std(axis=0)  # d, h, w: the grid itself is isotropic
        assert in_voxels / in_voxels.mean() == pytest.approx(np.ones(3), abs=0.2), in_voxels
        spread = _volume_lesion(volume).std(axis=0)  # x, y, z in mm
        truth = _source_lesion(series).std(axis=0)
        assert spread[2] / spread[:2].mean() == pytest.approx(1.0, abs=0.25), spread
        assert spread == pytest.approx(truth, rel=0.25), (spread, truth)
        # In source voxels the sphere is half as deep as wide: without the spacing it would come out flattened.
        assert truth[2] / series.slice_spacing < 0.6 * truth[0] / series.pixel_spacing[1]


def _rank_correlation(values: np.ndarray) -> float:
    ranks = np.argsort(np.argsort(values, kind="stable"))
    return float(np.corrcoef(ranks, np.arange(len(values)))[0, 1])


def _disk_profile(volume: Volume) -> np.ndarray:
    """The disk's size at each depth: the plane's sum in the lesion window (the saturated spine adds a constant; a
    sum, unlike a count of coarse voxels, has no ties to break one way or the other)."""
    return volume.array.astype(np.float64).sum(axis=(1, 2))


def test_the_order_set_shows_its_class_along_depth_and_the_scrambled_set_does_not(
    order_series: dict[bool, list[tuple[str, Series]]],
) -> None:
    for label, series in order_series[False]:
        volume = read_volume(series, size=(12, 32, 32), window=LESION_WINDOW)
        rho = _rank_correlation(_disk_profile(volume))
        assert rho > 0.9 if label == "abnormal" else rho < -0.9, (series.location, rho)
    scrambled = [_rank_correlation(_disk_profile(read_volume(s, size=(12, 32, 32), window=LESION_WINDOW)))
                 for _, s in order_series[True]]
    assert max(abs(rho) for rho in scrambled) < 0.5, scrambled


def test_real_ct5n_is_oriented_and_maps_back_to_its_slices() -> None:
    series = assemble(sorted(CT5N.iterdir())).series[0]
    volume = read_volume(series, size=(16, 32, 32))
    assert volume.array.shape == (16, 32, 32) and volume.array.std() > 10 and volume.notes == ()
    # D towards the head (+z), H towards the back (+y), W towards the patient's left (+x): LPS, depth first.
    assert np.allclose(np.sign(volume.affine[:3, :3]), [[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    assert np.allclose(np.linalg.norm(volume.affine[:3, :3], axis=0), volume.spacing, rtol=0.05)
    assert volume.spacing == pytest.approx(5 * 2.5 / 16)  # the 12.5 mm depth fills D; 7.8 mm in-plane is padded
    z = {ref.file: float(pydicom.dcmread(ref.file, stop_before_pixels=True).ImagePositionPatient[2])
         for ref in series.slices}
    for d in range(16):
        nearest = volume.slice_at((d, 16, 16))
        assert nearest is not None
        assert abs(z[nearest.file] - (volume.affine @ [d, 16, 16, 1])[2]) <= 2.5 / 2 + 1e-6
    assert volume.slice_at((8, 0, 0)) is None  # the padding maps to no slice


def test_real_enhanced_multiframe_files_read_with_their_shape_and_orientation() -> None:
    folder = pydicom_data_dir()
    report = assemble([folder / "eCT_Supplemental.dcm", folder / "emri_small.dcm"], root=folder)
    found = {s.location: s for s in report.series}
    ct = read_volume(found["eCT_Supplemental.dcm"], size=(8, 32, 32))
    assert ct.array.shape == (8, 32, 32) and ct.array.max() > 0
    # Its rows run towards -x (ImageOrientationPatient -1,0,0,...): W is flipped to run towards the left.
    assert ct.source_affine[0, 2] < 0 < ct.affine[0, 2]
    centre = np.array([[d, 16, 16] for d in range(8)], dtype=float)
    frames = [ct.slice_at(point) for point in centre]
    seen = [ref.frame for ref in frames if ref is not None]
    assert seen == sorted(seen) and set(seen) == {0, 1}  # D runs towards the head: frame 0 (z -159), then 1 (z -149)
    # Its two frames' 20 mm take 3 voxels of the ~6.2 mm grid that 512 x 0.39 mm in-plane needs, centred at z -154.
    assert (ct.affine @ [3.5, 16, 16, 1])[2] == pytest.approx(-154.0, abs=ct.affine[2, 0] / 2 + 1e-6)
    assert ct.affine[2, 0] == pytest.approx(20 / 3)
    # emri_small has no PixelSpacing and no orientation: 1 mm and the stored axes, said in the notes.
    mr = read_volume(found["emri_small.dcm"], size=(16, 32, 32))
    assert mr.array.shape == (16, 32, 32) and mr.array.std() > 10
    assert mr.notes == ("no PixelSpacing: 1 mm assumed", "no ImageOrientationPatient: the stored axes taken as x, y, z "
                                                         "from 0")
    assert mr.spacing == pytest.approx(2.0)  # 64 x 1 mm into 32 voxels; 10 x 1.2 mm deep
    # 12 mm deep at 2 mm: 6 voxels, padded 5 before and 5 after; voxel d maps to frame (d - 5 + 0.5) x 10/6 - 0.5.
    assert [mr.slice_at((d, 16, 16)) for d in (4, 11)] == [None, None]
    assert [mr.slice_at((d, 16, 16)).frame for d in range(5, 11)] == [0, 2, 4, 5, 7, 9]


def _identifiers(files: list[Path]) -> list[str]:
    keywords = ("SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID", "PatientID", "PatientName")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    return [v for ds in headers for v in (str(ds.get(k, "") or "").strip() for k in keywords) if len(v) >= 4]


def test_bad_inputs_are_refused_with_clear_messages_and_no_identifier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [Path(shutil.copy(source, tmp_path / f"{i}.dcm")) for i, source in enumerate(sorted(CT5N.iterdir()))]
    series = assemble(files, root=tmp_path).series[0]
    messages = []
    cases = [((16, 32), "three sides"), ((2, 32, 32), "each in [4, 512]"),
             ((256, 256, 512), "training.dataset.volume.MAX_TARGET_VOXELS")]
    for size, expected in cases:
        with pytest.raises(VolumeError, match=expected.replace("[", r"\[")) as error:
            read_volume(series, size=size)
        messages.append(str(error.value))
    with monkeypatch.context() as patch:
        patch.setattr(volume_module, "MAX_VOLUME_VOXELS", 1000)
        with pytest.raises(VolumeError, match=r"series 1: 5 slices of 16 x 16 are 1280 voxels; a volume holds at "
                                              r"most 1000 \(training.dataset.series.MAX_VOLUME_VOXELS\)") as error:
            read_volume(series, size=(16, 32, 32))
        messages.append(str(error.value))
    identifiers = _identifiers(files)
    third = series.slices[2].file
    raw = third.read_bytes()
    third.write_bytes(raw[: len(raw) - 300])  # the pixel data cut short after assembly
    with pytest.raises(VolumeError, match=r"series 1, slice 3 of 5: ") as error:
        read_volume(series, size=(16, 32, 32))
    messages.append(str(error.value))
    third.unlink()
    with pytest.raises(VolumeError, match=r"series 1, slice 3 of 5: the file does not exist") as error:
        read_volume(series, size=(16, 32, 32))
    messages.append(str(error.value))
    assert identifiers and not [value for value in identifiers if any(value in m for m in messages)]
    assert not [m for m in messages if str(tmp_path) in m]  # slices named by position, not by path
