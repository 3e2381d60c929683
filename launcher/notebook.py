"""What notebooks/dicom_training.ipynb checks and shows, here rather than in its cells, so that it is tested.

    print(check_kernel())                      # first cell: are the kernel's packages installed?
    check_dataset(DATA_DIR)                    # python -m training.check on each channel (series=True: --series)
    show_samples(DATA_DIR)                     # class counts and a few images of each class
    print(summarize(results))                  # the test metrics with their 95% intervals
    show_figures(results)                      # the job's learning curve and confusion matrix
    show_predictions(predictions, truth)       # held-out images with predicted label and probability
    print(clean_up(job, manifest))             # stops the job if it still runs; says what stays

Only the standard library is imported with this module: check_kernel must work in a kernel whose packages are still
being installed. Everything else (matplotlib, IPython, the job's training package, boto3) is imported by the function
that needs it.
"""

from __future__ import annotations

import math
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from launcher.datasets.manifest import DatasetManifest
    from launcher.jobs.handle import TrainingJob
    from launcher.jobs.results import JobResults

# Written by infra/lifecycle/on_start.sh (render.STATE_DIR and its markers); duplicated because the launcher never
# imports infra/ (tests/launcher/test_notebook_helpers.py holds the two in step).
STATE_DIR = Path("/home/ec2-user/SageMaker/.monai-dicom")
KERNEL_READY = "kernel-ready"  # holds the conda env the packages went into
KERNEL_FAILED = "kernel-install-failed"  # holds the reason
KERNEL_LOG = "kernel-install.log"
# Present on every SageMaker notebook instance (its ARN and name), nowhere else.
INSTANCE_METADATA = Path("/opt/ml/metadata/resource-metadata.json")
SAMPLE_SIZE = (128, 128)  # display resolution of sample images: enough to see a lesion, small to decode
MAX_CLASSES_SHOWN = 6


class KernelNotReadyError(RuntimeError):
    """The notebook kernel's packages are not (yet) installed; the message says what to do."""


def check_kernel(
    *,
    state_dir: Path = STATE_DIR,
    instance_metadata: Path = INSTANCE_METADATA,
    prefix: str | None = None,
    started: float | None = None,
) -> str:
    """Check that the lifecycle's background install into this kernel's conda env finished; say where we run.

    Args:
        state_dir: the lifecycle's state folder.
        instance_metadata: the file that marks a SageMaker notebook instance.
        prefix: this kernel's environment (default sys.prefix).
        started: when this kernel's process started (seconds since the epoch; default: read from /proc).

    Returns:
        One line saying what was found.

    Raises:
        KernelNotReadyError: on a notebook instance, the install is still running, failed, went into another
            kernel's environment, or finished after this kernel started; the message says what to do.
    """
    if not instance_metadata.is_file():
        return (f"Not on a SageMaker notebook instance: running locally with Python {sys.version.split()[0]} "
                f"({sys.executable}); the packages come from this environment.")
    log = state_dir / KERNEL_LOG
    ready, failed = state_dir / KERNEL_READY, state_dir / KERNEL_FAILED
    if failed.is_file():
        reason = failed.read_text(encoding="utf-8", errors="replace").strip()
        raise KernelNotReadyError(
            f"Installing this kernel's packages failed: {reason}. Read {log} (File > Open from Path), fix what it "
            "names (e.g. the notebook's internet access), then restart the notebook instance (Stop, Start): its "
            "lifecycle script installs them again on every start.")
    if not ready.is_file():
        if not state_dir.is_dir():
            raise KernelNotReadyError(
                f"{state_dir} does not exist: this notebook instance was not started with the stack's lifecycle "
                "configuration. Open the stack's notebook instance (the NotebookUrl output of make deploy).")
        raise KernelNotReadyError(
            "This kernel's packages (SageMaker SDK v3, MONAI, pydicom) are still being installed in the background; "
            f"it usually takes a few minutes after the instance starts. Watch {log} (e.g. in a terminal: "
            f"tail -f {log}); when {ready} appears, restart the kernel (Kernel > Restart Kernel) and run this cell "
            "again.")
    env = ready.read_text(encoding="utf-8", errors="replace").strip()
    here = prefix if prefix is not None else sys.prefix
    if env and Path(env).resolve() != Path(here).resolve():
        raise KernelNotReadyError(
            f"The packages were installed into {env}, but this kernel runs in {here}: choose the conda_pytorch kernel "
            "(Kernel > Change Kernel), then run this cell again.")
    started = started if started is not None else _process_start()
    if started is not None and ready.stat().st_mtime > started:
        raise KernelNotReadyError(
            "The packages were installed after this kernel started, so it may hold older versions in memory: "
            "restart the kernel (Kernel > Restart Kernel) and run this cell again.")
    return f"Kernel ready: packages installed into {env or here} (log: {log})."


def fetch_pseudonym_key(settings: Any, path: str | os.PathLike[str] | None = None) -> Path:
    """Download the deployment's pseudonym key (launcher/jobs/launch.py, made on first use) to a 0600 file.

    Args:
        settings: the stack's launcher.settings.Settings.
        path: where it goes; default the local key path (training/dataset/pseudonym_key.py), which then gives the job's
            pseudonyms to every local check.
    """
    from launcher.jobs.launch import PSEUDONYM_KEY_OBJECT, ensure_pseudonym_key
    from training.dataset.pseudonym_key import default_key_path, load_key

    s3 = settings.boto_session().client("s3")
    ensure_pseudonym_key(settings, s3)
    body = s3.get_object(Bucket=settings.bucket, Key=PSEUDONYM_KEY_OBJECT)["Body"].read()
    target = Path(path) if path is not None else default_key_path()
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(body)
    os.chmod(target, 0o600)
    load_key(target)  # 32 bytes, 0600
    return target


def check_dataset(data_dir: str | os.PathLike[str], settings: Any = None, *, series: bool = False) -> int:
    """Run the job's data check (`python -m training.check`) on a local dataset's channels, here in the kernel.

    Args:
        data_dir: a folder with train/ (validation/, test/), or the train channel itself (as upload_dataset reads it).
        settings: the stack's Settings: check with the deployment's pseudonym key, so that the patients go by the
            names the training jobs give them; None: the local key.
        series: list the series (volumes) and the bad ones instead (`training.check --series`).

    Returns:
        training.check's exit status: 0 every labeled file is usable, 1 some files are bad, 2 unusable.
    """
    from launcher.datasets.upload import local_channels
    from training import check

    channels = local_channels(Path(data_dir))
    argv = [str(channels.pop("train"))] + [f"--{name}={path}" for name, path in channels.items()]
    if series:
        argv.append("--series")
    elif settings is not None:
        argv.append(f"--pseudonym-key-file={fetch_pseudonym_key(settings)}")
    print("python -m training.check " + " ".join(argv))
    return check.main(check.parse_args(argv))


def labeled_files(channel_dir: str | os.PathLike[str], *, channel: str = "train") -> list[tuple[Path, str]]:
    """The labeled DICOM files of a channel folder, read with the job's own label reader.

    Args:
        channel_dir: the channel's folder (labels.csv, a Ground Truth output manifest, meta-data.json or class folders).
        channel: its name, for messages.

    Returns:
        (path, label) pairs, sorted by path.
    """
    from training.dataset.labels import list_channel

    listing = list_channel(channel, channel_dir)
    return [(listing.root / item.file, item.label) for item in listing.items]


def held_out_files(data_dir: str | os.PathLike[str], count: int = 8) -> list[tuple[Path, str]]:
    """Files the job did not train on, with their labels: from the test channel (else validation), classes mixed.

    Args:
        data_dir: the local dataset (see check_dataset).
        count: at most this many.

    Raises:
        ValueError: the dataset has neither a test nor a validation folder.
    """
    from launcher.datasets.upload import local_channels

    channels = local_channels(Path(data_dir))
    name = next((c for c in ("test", "validation") if c in channels), None)
    if name is None:
        raise ValueError(f"{data_dir} has no test/ or validation/ folder, so no file is held out from training: give "
                         "predict_files a list of other DICOM files")
    by_label: dict[str, list[tuple[Path, str]]] = {}
    for path, label in labeled_files(channels[name], channel=name):
        by_label.setdefault(label, []).append((path, label))
    # One of each class in turn, then what the larger classes have left.
    mixed = [pair for group in zip_longest(*by_label.values()) for pair in group if pair is not None]
    return mixed[:count]


def show_samples(data_dir: str | os.PathLike[str], *, per_class: int = 4, seed: int = 0) -> Figure:
    """Plot each channel's class counts and a few images of each class of the train channel.

    Args:
        data_dir: the local dataset (see check_dataset).
        per_class: images shown per class.
        seed: which images are picked.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from launcher.datasets.upload import local_channels
    from training.dataset.dicom import load_image

    channels = local_channels(Path(data_dir))
    counts = {name: Counter(label for _, label in labeled_files(folder, channel=name))
              for name, folder in channels.items()}
    classes = sorted(set().union(*counts.values()))
    shown = classes[:MAX_CLASSES_SHOWN]
    figure = plt.figure(figsize=(3 + 2 * per_class, 2.2 * max(2, len(shown))), layout="constrained")
    grid = figure.add_gridspec(len(shown), per_class + 2)
    bars = figure.add_subplot(grid[:, :2])
    width = 0.8 / len(counts)
    for offset, (name, counter) in enumerate(counts.items()):
        bars.barh([i + offset * width for i in range(len(classes))], [counter[c] for c in classes], height=width,
                  label=f"{name} ({sum(counter.values())})")
    bars.set_yticks([i + width * (len(counts) - 1) / 2 for i in range(len(classes))], labels=classes)
    bars.invert_yaxis()
    bars.set_xlabel("images")
    bars.set_title("class counts")
    bars.legend()
    rng = np.random.default_rng(seed)
    train = labeled_files(channels["train"])
    for row, label in enumerate(shown):
        paths = [path for path, item_label in train if item_label == label]
        for column, index in enumerate(sorted(rng.permutation(len(paths))[:per_class])):
            axis = figure.add_subplot(grid[row, column + 2])
            axis.imshow(load_image(paths[index], image_size=SAMPLE_SIZE)[0], cmap="gray", vmin=0, vmax=1)
            axis.set_title(label, fontsize=9)
            axis.axis("off")
    return figure


def summarize(results: JobResults) -> str:
    """The job's headline numbers from its metrics.json: test (else validation) metrics with 95% intervals.

    Args:
        results: from collect().
    """
    metrics = results.metrics
    lines = [f"{results.job.name}: {results.status}; best epoch {metrics.get('best_epoch')} of "
             f"{metrics.get('epochs_run')}, {metrics.get('seconds')} s of training"]
    for split in ("test", "validation"):
        report = metrics.get(split)
        if not report:
            continue
        lines.append(f"{split} set ({report.get('n')} images):")
        for name, entry in report.get("metrics", {}).items():
            value, (low, high) = entry.get("value"), entry.get("ci95") or (None, None)
            lines.append(f"  {name:<12} {_number(value)}  (95% CI {_number(low)} to {_number(high)})")
        break
    point, calibration = metrics.get("operating_point"), metrics.get("calibration") or {}
    if point:
        target = f" for {point['method'].replace('_', ' ')} {point['target']:g} on validation" if point.get(
            "target") is not None else " (the threshold hyperparameter)"
        lines.append(f"operating point: threshold {_number(point['threshold'])}{target}")
    if "after" in calibration:
        lines.append(f"calibration: temperature {_number(calibration['temperature'])}; {calibration['measured_on']} "
                     f"ECE {_number(calibration['before']['ece'])} -> {_number(calibration['after']['ece'])}, Brier "
                     f"{_number(calibration['before']['brier'])} -> {_number(calibration['after']['brier'])}")
    return "\n".join(lines)


def subgroup_table(results: JobResults) -> str:
    """The test metrics per subgroup (metrics.json "subgroups": Manufacturer, Modality, PatientSex, age band, ...),
    one row per attribute value with n and each metric with its 95% interval; values rarer than the job's minimum
    are pooled as "other".

    Args:
        results: from collect().
    """
    from training.job.subgroups import table_rows

    report = results.metrics.get("subgroups")
    if not report:
        return "no subgroups: the data carried none of the attributes (Manufacturer, Modality, PatientSex, ...)"
    rows = table_rows(report)
    metrics = [m for m in ("accuracy", "auc", "sensitivity", "specificity") if rows and m in rows[0]]
    lines = [f"{report['split']} set by subgroup (values with fewer than {report['min_size']} cases pooled as "
             "'other'):", f"{'attribute':<22} {'value':<18} {'n':>5}  " + "  ".join(f"{m:<21}" for m in metrics)]
    for row in rows:
        cells = [f"{_number(row[m])} ({_number(row[m + '_ci95'][0])}-{_number(row[m + '_ci95'][1])})" for m in metrics]
        lines.append(f"{row['attribute']:<22} {row['value'][:18]:<18} {row['n']:>5}  " + "  ".join(
            f"{c:<21}" for c in cells))
    return "\n".join(lines)


def show_figures(results: JobResults) -> None:
    """Display the job's own figures (results.plots: learning curve, confusion matrix) from its collected output.

    Args:
        results: from collect().
    """
    from IPython.display import Image, display

    for path in results.plots:
        display(Image(filename=str(path)))


def show_predictions(predictions: Sequence[Any], truth: Mapping[str, str] | None = None, *,
                     columns: int = 4) -> Figure:
    """Plot predicted files with the predicted label, its probability and (when known) the true label.

    Args:
        predictions: training.inference.Prediction objects (file, label, probabilities).
        truth: file (as in the predictions) to its true label.
        columns: images per row.
    """
    import matplotlib.pyplot as plt

    from training.dataset.dicom import load_image

    rows = max(1, math.ceil(len(predictions) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), layout="constrained",
                                squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, prediction in zip(axes.flat, predictions, strict=False):
        axis.imshow(load_image(prediction.file, image_size=SAMPLE_SIZE)[0], cmap="gray", vmin=0, vmax=1)
        title = f"{prediction.label} (p={prediction.probabilities[prediction.label]:.2f})"
        true = (truth or {}).get(prediction.file)
        if true is not None:
            title += f"\ntrue: {true}"
        axis.set_title(title, fontsize=9, color="black" if true is None else "green" if true == prediction.label
                       else "red")
    return figure


def prediction_table(predictions: Sequence[Any], truth: Mapping[str, str] | None = None) -> str:
    """One line per prediction: file name, predicted label, its probability, true label.

    Args:
        predictions: training.inference.Prediction objects.
        truth: file to its true label.
    """
    lines = [f"{'file':<28} {'predicted':<12} {'probability':>11}  true"]
    for p in predictions:
        lines.append(f"{Path(p.file).name:<28} {p.label:<12} {p.probabilities[p.label]:>11.3f}  "
                     f"{(truth or {}).get(p.file, '?')}")
    return "\n".join(lines)


def clean_up(job: TrainingJob | None, manifest: DatasetManifest | None = None) -> str:
    """Stop what this notebook started and is still running (its training job); leave data and model in place.

    Args:
        job: the job the notebook started (None: it started none).
        manifest: the dataset it uploaded.

    Returns:
        What was stopped and what stays, several lines.
    """
    from launcher.jobs.follow import TERMINAL_STATUSES, stop_training

    lines = []
    if job is not None:
        status = job.boto_session().client("sagemaker").describe_training_job(
            TrainingJobName=job.name)["TrainingJobStatus"]
        if status in TERMINAL_STATUSES:
            lines.append(f"Training job {job.name} has ended ({status}): nothing to stop.")
        else:
            stop_training(job)
            lines.append(f"Training job {job.name} was {status}: asked SageMaker to stop it (it keeps the model "
                         "written so far).")
        lines.append(f"Kept: the model {job.model_uri} and the job's outputs {job.output_data_uri}.")
    if manifest is not None:
        lines.append(f"Kept: the dataset s3://{manifest.bucket}/{manifest.prefix} ({len(manifest.objects)} files).")
    lines.append("Nothing else runs on your behalf (the inference section's endpoint and model are deleted above). "
                 "The data bucket outlives "
                 "`make destroy` unless the stack was deployed with -c destroyData=true; delete objects in the S3 "
                 "console when you no longer need them.")
    return "\n".join(lines)


def _number(value: Any) -> str:
    return "  n/a" if value is None else f"{float(value):.3f}"


def _process_start() -> float | None:
    """When this process started (seconds since the epoch), from /proc; None where /proc is not there."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None

