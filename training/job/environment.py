"""The SageMaker training contract, read in this one module: paths, channels, hyperparameters, hosts and identity.

Under SageMaker the job finds (whichever driver runs it, the SDK's sm_train.sh or the container's training toolkit):

    SM_MODEL_DIR        /opt/ml/model: the bundle goes here; SageMaker uploads it as model.tar.gz
    SM_OUTPUT_DATA_DIR  /opt/ml/output/data: metrics.json, figures; uploaded as output.tar.gz
    SM_CHANNEL_<NAME>   /opt/ml/input/data/<name> for the channels train, validation, test and manifest (the
                        dataset manifest)
    SM_HPS              the hyperparameters as JSON (values decoded; both drivers also pass them as --name value)
    SM_HOSTS, SM_CURRENT_HOST, SM_NUM_GPUS, SM_TRAINING_ENV (present only under SageMaker)

Locally the same values come from flags: `--train DIR [--validation DIR] [--test DIR] [--manifest PATH]
--model-dir DIR --output-dir DIR`, defaulting to ./model and ./output. A flag always wins over the environment.

Checkpoints (training/job/checkpoint.py): under SageMaker /opt/ml/checkpoints when the job has a checkpoint location
(SageMaker creates the directory then, and syncs it with S3); locally `--checkpoint-dir DIR`, none by default. A
checkpoint to start a new job from: `--resume-from PATH` (a file or a directory of them), or a channel `resume`.

The pseudonym key (training/dataset/pseudonym_key.py): `--pseudonym-key-file PATH`, else under SageMaker the file
channel `pseudonym_key` (SM_CHANNEL_PSEUDONYM_KEY, a directory holding one file), else the local key.

Other variables read here (set by the image, the launcher or torchrun; all optional):
    TRAINING_IMAGE_*      the image's identity (e.g. TRAINING_IMAGE_VERSION), copied into the bundle's lineage
    TRAINING_CODE_COMMIT  the git commit of the shipped code (a SageMaker job's code has no .git to ask)
    RANK, LOCAL_RANK, WORLD_SIZE  torchrun's process placement; one process when absent
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from training.job.config import json_to_string

DATA_CHANNELS = ("train", "validation", "test")  # what the job trains, selects and reports on
MANIFEST_CHANNEL = "manifest"  # optional: the launcher's record of S3 objects and version ids (training/job/lineage.py)
RESUME_CHANNEL = "resume"  # optional: checkpoints of an earlier job to start from
PSEUDONYM_KEY_CHANNEL = "pseudonym_key"  # optional: one file, the secret key of the patient pseudonyms
LOCAL_MODEL_DIR = Path("model")  # local defaults mirror /opt/ml/model and /opt/ml/output/data
LOCAL_OUTPUT_DIR = Path("output")
# Hyperparameters SageMaker's own tooling may add (SDK v2 estimators, the toolkit): accepted and ignored.
INJECTED_PREFIXES = ("sagemaker_", "sagemaker-")


@dataclass(frozen=True)
class JobContext:
    """Where the job reads and writes, and what it knows about the machine it runs on.

    Attributes:
        channels: channel name to its directory, for the data channels that were given (train at least).
        manifest: the dataset manifest (launcher/datasets/manifest.py), a file or its channel's directory.
        model_dir: the bundle's directory.
        output_dir: metrics, figures and reports.
        hyperparameters: from SM_HPS, as strings (what SageMaker was sent), for `config.from_arguments`.
        on_sagemaker: whether SageMaker runs the job (SM_TRAINING_ENV is set by both drivers).
        progress_bar: show tqdm bars (a terminal and not SageMaker: CloudWatch would log every refresh).
        job_name: TRAINING_JOB_NAME under SageMaker.
        hosts: all hosts of the job; current_host: this one.
        num_gpus: GPUs SageMaker counted on this host (0 locally unless CUDA is visible; see train.py).
        rank, local_rank, world_size: the process's place among torchrun's processes.
        image: TRAINING_IMAGE_* values, keys lower-cased without the prefix.
        code_commit: TRAINING_CODE_COMMIT when set.
        checkpoint_dir: where this job writes its checkpoints and, after a restart, finds them; None: no checkpoints.
        resume_from: a checkpoint (file or directory) a new job starts from; None: a fresh start.
        pseudonym_key_file: the pseudonym key's file; None: the local key (training/dataset/pseudonym_key.py).
        pseudonym_key_from_channel: the file came from the `pseudonym_key` channel (its mode is the platform's).
    """

    channels: dict[str, Path]
    model_dir: Path
    output_dir: Path
    manifest: Path | None = None
    hyperparameters: dict[str, str] = field(default_factory=dict)
    on_sagemaker: bool = False
    progress_bar: bool = False
    job_name: str | None = None
    hosts: tuple[str, ...] = ("localhost",)
    current_host: str = "localhost"
    num_gpus: int = 0
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    image: dict[str, str] = field(default_factory=dict)
    code_commit: str | None = None
    checkpoint_dir: Path | None = None
    resume_from: Path | None = None
    pseudonym_key_file: Path | None = None
    pseudonym_key_from_channel: bool = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the path flags: --train, --validation, --test, --manifest, --model-dir, --output-dir.

    Args:
        parser: the parser to extend.
    """
    group = parser.add_argument_group("data and outputs (under SageMaker: SM_CHANNEL_*, SM_MODEL_DIR, ...)")
    for channel in DATA_CHANNELS:
        group.add_argument(f"--{channel}", type=Path, default=None, metavar="DIR", help=f"the {channel} channel")
    group.add_argument("--manifest", type=Path, default=None, metavar="PATH", help="S3 manifest (file or dir)")
    group.add_argument("--model-dir", "--model_dir", dest="model_dir", type=Path, default=None, metavar="DIR")
    group.add_argument("--output-dir", "--output_dir", dest="output_dir", type=Path, default=None, metavar="DIR")
    group.add_argument("--checkpoint-dir", "--checkpoint_dir", dest="checkpoint_dir", type=Path, default=None,
                       metavar="DIR", help="write a checkpoint every epoch here; a rerun goes on from the newest")
    group.add_argument("--resume-from", "--resume_from", dest="resume_from", type=Path, default=None,
                       metavar="PATH", help="start from this checkpoint (file, or directory of checkpoints)")
    group.add_argument("--pseudonym-key-file", "--pseudonym_key_file", dest="pseudonym_key_file", type=Path,
                       default=None, metavar="PATH", help="the patient pseudonyms' secret key (32 bytes, mode 0600)")


def read_context(
    namespace: argparse.Namespace, environ: Mapping[str, str] | None = None, *, interactive: bool = False
) -> JobContext:
    """Combine the path flags with the SageMaker (and torchrun) environment.

    Args:
        namespace: parsed by a parser that `add_arguments` extended.
        environ: the environment; default os.environ.
        interactive: whether stdout is a terminal (decides the progress bar with `on_sagemaker`).

    Returns:
        The job's context.

    Raises:
        ValueError: no train channel, a channel directory that does not exist, or SM_HPS that is not JSON.
    """
    env = os.environ if environ is None else environ
    channels: dict[str, Path] = {}
    for name in DATA_CHANNELS:
        given = getattr(namespace, name, None)
        from_env = env.get(f"SM_CHANNEL_{name.upper()}")
        path = given if given is not None else (Path(from_env) if from_env else None)
        if path is not None:
            if not path.is_dir():
                raise ValueError(f"the {name} channel {path} is not a directory; pass --{name} DIR with DICOM files")
            channels[name] = path
    if "train" not in channels:
        raise ValueError("no training data: pass --train DIR (locally) or give the job a 'train' channel (SageMaker)")
    manifest = namespace.manifest
    if manifest is None and env.get(f"SM_CHANNEL_{MANIFEST_CHANNEL.upper()}"):
        manifest = Path(env[f"SM_CHANNEL_{MANIFEST_CHANNEL.upper()}"])

    on_sagemaker = "SM_TRAINING_ENV" in env
    current_host = env.get("SM_CURRENT_HOST", "localhost")
    checkpoint_dir = getattr(namespace, "checkpoint_dir", None)
    sagemaker_checkpoints = Path(env.get("SAGEMAKER_BASE_DIR", "/opt/ml")) / "checkpoints"
    if checkpoint_dir is None and on_sagemaker and sagemaker_checkpoints.is_dir():
        checkpoint_dir = sagemaker_checkpoints
    resume_from = getattr(namespace, "resume_from", None)
    if resume_from is None and env.get(f"SM_CHANNEL_{RESUME_CHANNEL.upper()}"):
        resume_from = Path(env[f"SM_CHANNEL_{RESUME_CHANNEL.upper()}"])
    key_file = getattr(namespace, "pseudonym_key_file", None)
    key_channel = env.get("SM_CHANNEL_" + PSEUDONYM_KEY_CHANNEL.upper().replace("-", "_")) or env.get(
        "SM_CHANNEL_" + PSEUDONYM_KEY_CHANNEL.upper()
    )
    key_dir = Path(env.get("SAGEMAKER_BASE_DIR", "/opt/ml")) / "input" / "data" / PSEUDONYM_KEY_CHANNEL
    if not key_channel and on_sagemaker and key_dir.is_dir():
        key_channel = str(key_dir)
    from_channel = key_file is None and bool(key_channel)
    if from_channel:
        from training.dataset.pseudonym_key import channel_key_file

        key_file = channel_key_file(str(key_channel))
    return JobContext(
        channels=channels,
        manifest=manifest,
        model_dir=namespace.model_dir or Path(env.get("SM_MODEL_DIR", LOCAL_MODEL_DIR)),
        output_dir=namespace.output_dir or Path(env.get("SM_OUTPUT_DATA_DIR", LOCAL_OUTPUT_DIR)),
        hyperparameters=_hyperparameters(env.get("SM_HPS")),
        on_sagemaker=on_sagemaker,
        progress_bar=interactive and not on_sagemaker,
        job_name=env.get("TRAINING_JOB_NAME"),
        hosts=tuple(str(h) for h in _list(env.get("SM_HOSTS"), "SM_HOSTS") or [current_host]),
        current_host=current_host,
        num_gpus=int(env.get("SM_NUM_GPUS", "0") or 0),
        rank=int(env.get("RANK", "0")),
        local_rank=int(env.get("LOCAL_RANK", "0")),
        world_size=int(env.get("WORLD_SIZE", "1")),
        image={k[len("TRAINING_IMAGE_") :].lower(): v for k, v in env.items() if k.startswith("TRAINING_IMAGE_")},
        code_commit=env.get("TRAINING_CODE_COMMIT") or None,
        checkpoint_dir=checkpoint_dir,
        resume_from=resume_from,
        pseudonym_key_file=key_file,
        pseudonym_key_from_channel=from_channel,
    )


def write_failure(message: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """Under SageMaker, write the reason for a failed job where SageMaker shows it (the job's FailureReason).

    Args:
        message: the reason; SageMaker shows the first 1,024 characters.
        environ: the environment; default os.environ.

    Returns:
        The file written, or None when not under SageMaker.
    """
    env = os.environ if environ is None else environ
    if "SM_TRAINING_ENV" not in env:
        return None
    path = Path(env.get("SM_OUTPUT_FAILURE") or Path(env.get("SM_OUTPUT_DIR", "/opt/ml/output")) / "failure")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message[:1024], encoding="utf-8")
    except OSError:
        return None
    return path


def split_injected(unknown: list[str]) -> tuple[list[str], list[str]]:
    """Separate SageMaker's own injected arguments (`--sagemaker_*` and their values) from genuine unknowns.

    Args:
        unknown: what argparse did not recognise.

    Returns:
        (ignored, rejected) argument lists.
    """
    ignored: list[str] = []
    rejected: list[str] = []
    skipping = False
    for token in unknown:
        if token.startswith("--"):
            skipping = token[2:].startswith(INJECTED_PREFIXES)
            (ignored if skipping else rejected).append(token)
        else:
            (ignored if skipping else rejected).append(token)
    return ignored, rejected


def _hyperparameters(text: str | None) -> dict[str, str]:
    """SM_HPS to strings, without SageMaker's own injected names."""
    decoded = _json(text, "SM_HPS") or {}
    if not isinstance(decoded, dict):
        raise ValueError(f"SM_HPS must be a JSON object of hyperparameters; got {text!r}")
    return {k: json_to_string(v) for k, v in decoded.items() if not k.startswith(INJECTED_PREFIXES)}


def _list(text: str | None, name: str) -> list[object]:
    decoded = _json(text, name)
    if decoded is not None and not isinstance(decoded, list):
        raise ValueError(f"{name} must be a JSON list of host names; got {text!r}")
    return decoded or []


def _json(text: str | None, name: str) -> object:
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON ({exc.msg}); SageMaker sets it as JSON: {text[:200]!r}") from None
