"""The secret key of the patient pseudonyms (training/dataset/split.py `patient_hash`: HMAC-SHA256 keyed with it).

Where the key comes from, first found wins:

1. an explicit file: `--pseudonym-key-file PATH` (the job, `python -m training.check`);
2. under SageMaker, the file input channel `pseudonym_key` (training/job/environment.py reads its directory, which holds
   one file: the launcher's `secrets/pseudonym-key` object in the stack's bucket);
3. locally, `${XDG_CONFIG_HOME:-~/.config}/monai-dicom-sagemaker/pseudonym-key`, created on first use with
   `secrets.token_bytes(32)` and mode 0600.

A key file must hold exactly 32 bytes, have no group or other permissions, and lie outside every data channel;
anything else is refused with an error naming the file. The key is never logged, never a hyperparameter, never in
a checkpoint, bundle, data summary or metrics file: only the pseudonyms it makes are. The same key gives the same
pseudonyms on every run, and `training.check` with the job's key shows the job's pseudonyms.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["KEY_BYTES", "PseudonymKeyError", "default_key_path", "load_key", "local_key", "resolve_key"]

KEY_BYTES = 32


class PseudonymKeyError(ValueError):
    """A key file that is missing, of the wrong length, readable by others or inside a data folder."""


def default_key_path(environ: Mapping[str, str] | None = None) -> Path:
    """The local key file: ${XDG_CONFIG_HOME:-~/.config}/monai-dicom-sagemaker/pseudonym-key."""
    env = os.environ if environ is None else environ
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "monai-dicom-sagemaker" / "pseudonym-key"


def _inside(path: Path, folders: Iterable[Path]) -> Path | None:
    resolved = path.resolve()
    for folder in folders:
        root = Path(folder).resolve()
        if resolved == root or root in resolved.parents:
            return Path(folder)
    return None


def load_key(path: str | Path, *, data_dirs: Iterable[Path] = (), check_mode: bool = True) -> bytes:
    """Read and check a key file.

    Args:
        path: the key file.
        data_dirs: data channel folders the key must not be inside.
        check_mode: refuse group/other permissions (off for a SageMaker channel, whose mode the platform sets).

    Raises:
        PseudonymKeyError: the file is missing, inside a data folder, readable by others or not 32 bytes.
    """
    path = Path(path)
    folder = _inside(path, data_dirs)
    if folder is not None:
        raise PseudonymKeyError(
            f"pseudonym key file {path} is inside the data folder {folder}: keep the key out of the data"
        )
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise PseudonymKeyError(f"pseudonym key file {path} cannot be read: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise PseudonymKeyError(f"pseudonym key file {path} is not a regular file")
    if check_mode and mode & 0o077:
        raise PseudonymKeyError(
            f"pseudonym key file {path} has mode {stat.S_IMODE(mode):04o}: others may read it; run chmod 600 {path}"
        )
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise PseudonymKeyError(f"pseudonym key file {path} holds {len(key)} bytes; a key is {KEY_BYTES} bytes")
    return key


def local_key(environ: Mapping[str, str] | None = None, *, data_dirs: Iterable[Path] = ()) -> bytes:
    """The local key (default_key_path), created with 32 random bytes and mode 0600 on first use."""
    path = default_key_path(environ)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(KEY_BYTES))
    return load_key(path, data_dirs=data_dirs)


def channel_key_file(channel_dir: str | Path) -> Path:
    """The one file of the directory of the key's channel (training/job/environment.py PSEUDONYM_KEY_CHANNEL)."""
    channel_dir = Path(channel_dir)
    files = sorted(p for p in channel_dir.rglob("*") if p.is_file()) if channel_dir.is_dir() else []
    if len(files) != 1:
        raise PseudonymKeyError(
            f"the pseudonym key's channel {channel_dir} must hold exactly one key file; it holds {len(files)}"
        )
    return files[0]


def resolve_key(
    key_file: str | Path | None = None,
    *,
    from_channel: bool = False,
    data_dirs: Iterable[Path] = (),
    environ: Mapping[str, str] | None = None,
) -> bytes:
    """The key: `key_file` when given (a channel's file when `from_channel`), else the local key."""
    data_dirs = list(data_dirs)
    if key_file is not None:
        return load_key(key_file, data_dirs=data_dirs, check_mode=not from_channel)
    return local_key(environ, data_dirs=data_dirs)
