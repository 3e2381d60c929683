"""`python -m launcher.pacs pull` and `python -m launcher.pacs push`: the PACS round trip from a shell.

    python -m launcher.pacs pull (URL | --dimse HOST:PORT:AET [--move-to AET[@HOST]:PORT]) OUT [--study UID]...
        [--query KEY=VALUE]... [--labels CSV] [--link FILE] [--allow-burned-in] [--pseudonym-key-file FILE]
    python -m launcher.pacs push (URL | --dimse HOST:PORT:AET) PREDICTIONS --model BUNDLE_DIR [--link FILE]

Pull: studies over DICOMweb (URL is the DICOMweb root, e.g. http://host:8042/dicom-web) or over DIMSE (C-FIND, then
C-GET, or C-MOVE to a storage SCP started here on 127.0.0.1:PORT, or HOST:PORT, with `--move-to`) into OUT,
de-identified with the deployment's pseudonym key (`--pseudonym-key-file`, else the local key of
training/dataset/pseudonym_key.py). With `--labels CSV` (a StudyInstanceUID or AccessionNumber column, and label:
launcher/pacs/labels.py) it pulls the labelled studies and writes OUT/labels.csv, so OUT is a channel the job accepts as
it is. The link back from pseudonyms to originals goes to `--link`, by default next to OUT as `OUT.link.jsonl` (outside
OUT, which is what gets uploaded; owner-only). Prints what was pulled as JSON; exits 2 with a message on an error.

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
from launcher.pacs.dimse import DimseAddress, parse_move_to
from launcher.pacs.intake import PullError
from launcher.pacs.labels import LabelsError
from launcher.pacs.push import Prediction, PushError, push_predictions, read_predictions
from launcher.pacs.roundtrip import default_link_path, pull
from launcher.pacs.sr import BundleIdentityError
from training.dataset.pseudonym_key import PseudonymKeyError, resolve_key

__all__ = ["default_link_path", "main"]


def _query(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("a query is KEY=VALUE, e.g. ModalitiesInStudy=CT")
    return key, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launcher.pacs", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pull = commands.add_parser("pull", help="pull studies over DICOMweb or DIMSE into OUT, de-identified")
    pull.add_argument("places", nargs="+", metavar="[URL] OUT", help="the DICOMweb root, e.g. "
                      "http://host:8042/dicom-web (none with --dimse), and the folder to write (what gets uploaded)")
    pull.add_argument("--study", action="append", default=[], help="a StudyInstanceUID (repeatable); default: all")
    pull.add_argument("--query", action="append", default=[], type=_query, help="a QIDO-RS filter KEY=VALUE")
    pull.add_argument("--labels", type=Path, metavar="CSV", help="a CSV of StudyInstanceUID or AccessionNumber, and "
                      "label: pull those studies and write OUT/labels.csv")
    pull.add_argument("--link", type=Path, help="the link file (default: OUT.link.jsonl next to OUT)")
    pull.add_argument("--allow-burned-in", action="store_true", help="import instances that may show burned-in text")
    pull.add_argument("--pseudonym-key-file", type=Path, help="the deployment's key (default: the local key)")
    pull.add_argument("--workers", type=int, default=4, help="instances retrieved at once (default 4)")
    pull.add_argument("--dimse", type=_dimse, metavar="HOST:PORT:AET", help="pull over DIMSE from this PACS")
    pull.add_argument("--move-to", type=_move_to, metavar="AET[@HOST]:PORT",
                      help="with --dimse: C-MOVE to a storage SCP started here on 127.0.0.1:PORT, or on HOST (this "
                      "machine's address the PACS reaches) (default: C-GET)")
    _push_parser(commands)
    return parser


def _dimse(text: str) -> DimseAddress:
    try:
        return DimseAddress.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _move_to(text: str) -> str:
    try:
        parse_move_to(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)  # a path after an option (URL --dimse X OUT) comes back as extra
    if args.command != "pull" or any(e.startswith("-") for e in extra):
        return parser.parse_args(argv)
    args.places += extra
    if len(args.places) > 2:
        parser.error("pull takes [URL] OUT: too many paths")
    args.url, args.out = (None, *args.places) if len(args.places) == 1 else args.places
    args.out = Path(args.out)
    if (args.url is None) == (args.dimse is None):
        parser.error("pull takes a DICOMweb URL or --dimse HOST:PORT:AET (exactly one of them)")
    if args.move_to and args.dimse is None:
        parser.error("--move-to is for a pull over DIMSE: give --dimse HOST:PORT:AET with it")
    return args


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
        address = DimseAddress.parse(text)
    except ValueError as error:
        raise PushError(str(error)) from None
    return address.host, address.port, address.called_aet


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
    args = _parse(argv)
    if args.command == "push":
        return _run_push(args)
    try:
        key = resolve_key(args.pseudonym_key_file, data_dirs=[args.out])
        pulled = pull(args.dimse or args.url, args.out, key=key, labels=args.labels, link_path=args.link,
                      studies=args.study, query=dict(args.query), move_to=args.move_to,
                      allow_burned_in=args.allow_burned_in, workers=args.workers)
    except (PullError, LinkFileError, PseudonymKeyError, LabelsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    printed = asdict(pulled.report) | ({"labels": asdict(pulled.labels)} if pulled.labels else {})
    print(json.dumps(printed, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
