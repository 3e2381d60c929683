"""Classify DICOM files with a trained bundle and print the JSON the endpoint would answer.

    python -m training.predict MODEL FILE_OR_DIR [FILE_OR_DIR ...] [--explain OUTDIR [--explain-method smoothgrad]]

MODEL is the bundle (the job's model directory, or its model.tar.gz extracted). Directories are searched at any depth
for DICOM files (by the 'DICM' marker, not the suffix). The output is training.inference's output_fn JSON, with
each file named by its path; a file that cannot be classified, or a bundle refused (training.job.bundle.BundleError),
stops the run with its reason (exit status 2).

--explain OUTDIR writes, for the n-th file, OUTDIR/000n.npy, the heat map of the predicted class (float32
in [0, 1], the file's Rows x Columns), and OUTDIR/000n.png, the image as the network saw it with the heat map over it;
each prediction gains "heatmap" and "overlay", their paths. The maps come from the bundle's PyTorch network
(training/serving/explain.py: its methods, their measured hit rates and costs); files are named by position only.

With a 3-D bundle (inference.json "spatial_dims" 3) the files found are assembled into series and each series is
predicted once: {"predictions": [{"series", "location", "SeriesInstanceUID", "slices", "label", "probabilities"}],
"bad": [{"series", "file", "reason"}]}. A bad series (a missing slice, a slice of another size, one that
cannot be decoded) is listed with its reason and the others are still predicted; the exit status is 2 only when no
series could be predicted. Series are named by position and location: the UID is in the answers alone. With
--explain, each series' map is OUTDIR/000n.npy, (slices, rows, columns) with the slices in slice-position order,
mapped back through the orientation and resampling (training/serving/explain_volumes.py), and OUTDIR/000n.png shows
the network's slice where the map is hottest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training import inference
from training.dataset.dicom import DicomReadError
from training.job.bundle import BundleError
from training.serving.explain import DEFAULT_METHOD, METHODS, check_count


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """MODEL and one or more files or directories."""
    parser = argparse.ArgumentParser(prog="python -m training.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="the bundle directory (configs/inference.json, models/model.pt)")
    parser.add_argument("sources", nargs="+", help="DICOM files, or directories searched for them")
    parser.add_argument("--explain", metavar="OUTDIR", default=None,
                        help="write each file's heat map (.npy) and overlay (.png) here, named by position (2-D only)")
    parser.add_argument("--explain-method", choices=METHODS, default=DEFAULT_METHOD,
                        help=f"how heat maps are computed (default {DEFAULT_METHOD})")
    return parser.parse_args(argv)


def collect(sources: Sequence[str]) -> list[Path]:
    """The files named, and the DICOM files under the directories named, in the order given.

    Raises:
        FileNotFoundError: a source does not exist.
    """
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            files.extend(Path(f) for f in inference.find_dicom_files(source))
        elif source.is_file():
            files.append(source)
        else:
            raise FileNotFoundError(f"{source} does not exist: pass DICOM files or directories holding them")
    return files


def predict_json(model_dir: str, sources: Sequence[str], *, explain: str | None = None,
                 method: str = DEFAULT_METHOD) -> str:
    """The JSON document for the files (what `main` prints); with `explain`, heat maps and overlays written there."""
    if explain is not None:
        check_count(len(collect(sources)))  # before any work, the bundle's loading included
    model = inference.model_fn(model_dir)
    if model.spatial_dims == 3:
        answers = _volumes(model, sources)
        if explain is not None:
            _explain_series(model_dir, sources, answers["predictions"], model.class_names, Path(explain))
        return json.dumps(answers)
    data, paths = [], collect(sources)
    for path in paths:
        (item,) = inference.input_fn(path.read_bytes(), inference.DICOM)
        data.append(dataclasses.replace(item, name=str(path)))
    results = inference.predict_fn(data, model)
    if explain is not None:
        from training.serving.explain import Explainer, write_explanations

        explainer = Explainer.from_bundle(model_dir, method=method)
        write_explanations(explainer, paths, results, model.class_names, Path(explain))
    body, _ = inference.output_fn(results, inference.JSON)
    return body.decode("utf-8")


def _volumes(model: inference.Predictor, sources: Sequence[str]) -> dict[str, Any]:
    """A 3-D bundle's answer: one prediction per series, the bad series with their reasons (nothing stops the run)."""
    files = collect(sources)
    try:
        predictions, bad = model.predict_volumes(files)
    except ValueError as exc:  # more files than training.dataset.series.MAX_FILES
        raise inference.InvalidInput(str(exc)) from None
    return {"predictions": [p.answer() for p in predictions], "bad": bad}


def _explain_series(model_dir: str, sources: Sequence[str], answers: list[dict[str, Any]],
                    class_names: Sequence[str], out: Path) -> None:
    """Each predicted series' heat map (OUT/000n.npy: slices x rows x columns, the slices in slice-position order)
    and overlay (OUT/000n.png: the network's slice where the map is hottest); each answer gains their paths."""
    from training.dataset.series import assemble
    from training.serving.explain import Explainer
    from training.serving.explain_volumes import explain_series

    explainer = Explainer.from_bundle(model_dir)
    by_name = {series.name: series for series in assemble(collect(sources)).series}
    out.mkdir(parents=True, exist_ok=True)
    for number, answer in enumerate(answers, start=1):
        found = explain_series(explainer, by_name[answer["series"]], list(class_names).index(answer["label"]))
        stem = out / f"{number:04d}"
        np.save(stem.with_suffix(".npy"), found.heatmap)
        stem.with_suffix(".png").write_bytes(found.overlay_png())
        answer["heatmap"], answer["overlay"] = str(stem.with_suffix(".npy")), str(stem.with_suffix(".png"))


def main(argv: Sequence[str] | None = None) -> int:
    """Print the predictions; 2 with the reason on stderr when a file (2-D) or every series (3-D) cannot be
    classified."""
    args = parse_args(argv)
    try:
        document = predict_json(args.model, args.sources, explain=args.explain, method=args.explain_method)
    except (inference.InvalidInput, BundleError, FileNotFoundError, DicomReadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(document)
    answers = json.loads(document)
    if "bad" in answers and not answers["predictions"]:
        print(f"error: no series could be predicted ({len(answers['bad'])} bad series or files, listed above)",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
