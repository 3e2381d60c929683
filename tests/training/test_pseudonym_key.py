"""Keyed patient pseudonyms (training/dataset/pseudonym_key.py): no output of a run holds a guessable hash or the
key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.pseudonyms import guessable
from training import check
from training.dataset.prepare import DataOptions, prepare
from training.dataset.pseudonym_key import PseudonymKeyError, load_key, local_key
from training.dataset.split import patient_hash
from training.job import train
from training.synthetic import generate


def _key(path: Path, byte: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(byte * 32)
    path.chmod(mode)
    return path


def _outputs(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in sorted(root.rglob("*")) if p.is_file())


def test_a_run_writes_keyed_pseudonyms_only(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    images = generate(data, count=16, size=64)
    key_file = _key(tmp_path / "key", b"\x07")
    model, output = tmp_path / "model", tmp_path / "output"
    argv = ["--train", str(data), "--model-dir", str(model), "--output-dir", str(output),
            "--pseudonym-key-file", str(key_file), "--epochs", "1", "--network", "resnet18", "--image_size", "32,32",
            "--batch_size", "8", "--bootstrap_samples", "5", "--torchscript", "false", "--precision", "fp32"]
    assert train.main(argv, environ={}) == 0
    written = _outputs(model) + _outputs(output) + capfd.readouterr().out
    ids = sorted({image.patient_id for image in images})
    assert ids and not any(value in written for value in ids)
    assert not any(value in written for value in guessable(ids))
    assert (b"\x07" * 32).hex() not in written and (b"\x07" * 32).decode("latin-1") not in written
    assert patient_hash("patient", ids[0], b"\x07" * 32) in written  # the manifest names patients by the key


def test_same_key_same_pseudonyms_other_key_others(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate(data, count=16, size=64)
    options = {"image_size": (16, 16), "workers": 1}
    one = [prepare({"train": data}, DataOptions(**options, pseudonym_key=b"a" * 32)) for _ in range(2)]
    other = prepare({"train": data}, DataOptions(**options, pseudonym_key=b"b" * 32))
    names = [[f["patient"] for f in d.summary["files"]] for d in (*one, other)]
    assert names[0] == names[1] and set(names[0]).isdisjoint(names[2])
    assert patient_hash("patient", "SYN-0001", b"a" * 32) != patient_hash("patient", "SYN-0001", b"b" * 32)


def test_check_shows_the_jobs_pseudonyms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    generate(data, count=16, size=64)
    key_file = _key(tmp_path / "key", b"c")
    check.main(check.parse_args([str(data), "--pseudonym-key-file", str(key_file), "--json", "--workers", "1"]))
    shown = capsys.readouterr().out
    assert patient_hash("patient", "SYN-0001", b"c" * 32) in shown


def test_a_key_readable_by_others_is_refused_naming_the_file(tmp_path: Path) -> None:
    key_file = _key(tmp_path / "key", b"d", mode=0o644)
    with pytest.raises(PseudonymKeyError, match=f"{key_file}.*0644"):
        load_key(key_file)


def test_a_key_of_the_wrong_length_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"short")
    key_file.chmod(0o600)
    with pytest.raises(PseudonymKeyError, match=f"{key_file}.*5 bytes"):
        load_key(key_file)


def test_a_key_inside_the_data_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    generate(data, count=16, size=64)
    key_file = _key(data / "key", b"e")
    with pytest.raises(PseudonymKeyError, match="inside the data folder"):
        load_key(key_file, data_dirs=[data])
    assert check.main(check.parse_args([str(data), "--pseudonym-key-file", str(key_file)])) == 2
    assert "inside the data folder" in capsys.readouterr().out


def test_the_local_key_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    first = local_key(environ)
    path = tmp_path / "config" / "monai-dicom-sagemaker" / "pseudonym-key"
    assert len(first) == 32 and os.stat(path).st_mode & 0o777 == 0o600
    assert local_key(environ) == first


def test_the_job_reads_the_key_from_its_channel(tmp_path: Path) -> None:
    import argparse

    from training.job import environment

    (tmp_path / "train").mkdir()
    key_dir = tmp_path / "input" / "data" / "pseudonym_key"
    key_dir.mkdir(parents=True)
    _key(key_dir / "pseudonym-key", b"f", mode=0o644)  # the platform's mode: accepted for a channel
    parser = argparse.ArgumentParser()
    environment.add_arguments(parser)
    namespace = parser.parse_args(["--train", str(tmp_path / "train")])
    context = environment.read_context(namespace, {"SM_TRAINING_ENV": "{}", "SM_CHANNEL_PSEUDONYM_KEY": str(key_dir)})
    assert context.pseudonym_key_file == key_dir / "pseudonym-key" and context.pseudonym_key_from_channel
    options = train.data_options(train.TrainConfig(), context)
    assert options.pseudonym_key == b"f" * 32 and "f" * 32 not in repr(options)
