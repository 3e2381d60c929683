"""`python -m launcher.pacs pull URL OUT [--study UID]... [--query KEY=VALUE]... [--link FILE] [--allow-burned-in]`
and `python -m launcher.pacs push (URL | --dimse HOST:PORT:AET) PREDICTIONS --model BUNDLE_DIR [--link FILE]`.

Pulls studies over DICOMweb (URL is the DICOMweb root, e.g. http://host:8042/dicom-web) into OUT, de-identified with
the deployment's pseudonym key (`--pseudonym-key-file`, else the local key of training/dataset/pseudonym_key.py).
The link back from pseudonyms to originals goes to `--link`, by default next to OUT as `OUT.link.jsonl` (outside OUT,
which is what gets uploaded; owner-only). Prints what was pulled as JSON; exits 2 with a message on an error.

Push stores each prediction of PREDICTIONS (what `python -m training.predict MODEL FILES...` printed) as a DICOM SR in
its original study, over DICOMweb (URL) or DIMSE (--dimse); the link file is found, unless `--link` names it, next to
the folder the predicted files were pulled into (OUT.link.jsonl beside OUT, as pull writes it). Prints what was pushed
as JSON; exits 2 with a message on an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from launcher.pacs.deidentify import LinkFileError
from launcher.pacs.pull import PullError, pull_dicomweb
from launcher.pacs.push import Prediction, PushError, parse_dimse_address, push_predictions, read_predictions
from launcher.pacs.sr import BundleIdentityError
from training.dataset.pseudonym_key import PseudonymKeyError, resolve_key


def default_link_path(out: str | Path) -> Path:
    """The link file a pull writes by default: next to OUT, as OUT.link.jsonl."""
    out = Path(out).resolve()
    return out.parent / f"{out.name}.link.jsonl"


def _query(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("a query is KEY=VALUE, e.g. ModalitiesInStudy=CT")
    return key, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launcher.pacs", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pull = commands.add_parser("pull", help="pull studies over DICOMweb into OUT, de-identified")
    pull.add_argument("url", help="the DICOMweb root, e.g. http://host:8042/dicom-web")
    pull.add_argument("out", type=Path, help="the folder to write (what gets uploaded)")
    pull.add_argument("--study", action="append", default=[], help="a StudyInstanceUID (repeatable); default: all")
    pull.add_argument("--query", action="append", default=[], type=_query, help="a QIDO-RS filter KEY=VALUE")
    pull.add_argument("--link", type=Path, help="the link file (default: OUT.link.jsonl next to OUT)")
    pull.add_argument("--allow-burned-in", action="store_true", help="import instances that may show burned-in text")
    pull.add_argument("--pseudonym-key-file", type=Path, help="the deployment's key (default: the local key)")
    pull.add_argument("--workers", type=int, default=4, help="instances retrieved at once (default 4)")
    _push_parser(commands)
    return parser


def _push_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = "python -m launcher.pacs push (URL | --dimse HOST:PORT:AET) PREDICTIONS --model BUNDLE_DIR [--link FILE]"
    push = commands.add_parser("push", help="store predictions as DICOM SR in their original studies", usage=usage)
    push.add_argument("where", nargs="+", metavar="URL PREDICTIONS",
                      help="the DICOMweb root (unless --dimse) and the predictions JSON of python -m training.predict")
    push.add_argument("--dimse", metavar="HOST:PORT:AET", help="push with C-STORE to this DICOM server instead")
    push.add_argument("--model", type=Path, required=True, metavar="BUNDLE_DIR",
                      help="the bundle that made the predictions")
    push.add_argument("--link", type=Path, metavar="FILE",
                      help="the pull's link file (default: OUT.link.jsonl beside the pull's OUT)")
    push.add_argument("--calling-aet", default="MONAI-PUSH", help="our AE title over DIMSE (default MONAI-PUSH)")
    push.add_argument("--timeout", type=float, default=30, help="seconds per request or DIMSE exchange (default 30)")


def _pulled_link(predictions: list[Prediction]) -> Path:
    """The link file a pull wrote by default for the predicted files: OUT.link.jsonl beside one of their folders."""
    for folder in Path(predictions[0].file).resolve().parents if predictions and predictions[0].file else []:
        if default_link_path(folder).is_file():
            return default_link_path(folder)
    raise PushError("no link file was found beside the folders of the predicted files (OUT.link.jsonl beside the "
                    "pull's OUT): pass the pull's link file with --link")


def _dimse_address(text: str) -> tuple[str, int, str]:
    try:
        return parse_dimse_address(text)
    except ValueError as error:
        raise PushError(str(error)) from None


def _run_push(args: argparse.Namespace) -> int:
    try:
        if len(args.where) != (1 if args.dimse else 2):
            raise PushError("give the DICOMweb URL and PREDICTIONS, or --dimse HOST:PORT:AET and PREDICTIONS")
        predictions = read_predictions(args.where[-1])
        dimse = _dimse_address(args.dimse) if args.dimse else None
        report = push_predictions(predictions, link_path=args.link or _pulled_link(predictions), model=args.model,
                                  dicomweb=None if dimse else args.where[0], dimse=dimse,
                                  calling_ae_title=args.calling_aet, timeout_s=args.timeout)
    except (PushError, LinkFileError, BundleIdentityError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(report), indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "push":
        return _run_push(args)
    try:
        key = resolve_key(args.pseudonym_key_file, data_dirs=[args.out])
        report = pull_dicomweb(args.url, args.out, key=key, link_path=args.link or default_link_path(args.out),
                               studies=args.study, query=dict(args.query), allow_burned_in=args.allow_burned_in,
                               workers=args.workers)
    except (PullError, LinkFileError, PseudonymKeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(report), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
