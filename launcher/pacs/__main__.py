"""`python -m launcher.pacs pull (URL | --dimse HOST:PORT:AET [--move-to AET:PORT]) OUT [--study UID]...
[--query KEY=VALUE]... [--link FILE] [--allow-burned-in]`.

Pulls studies over DICOMweb (URL is the DICOMweb root, e.g. http://host:8042/dicom-web) or over DIMSE (C-FIND, then
C-GET, or C-MOVE to a storage SCP started here on 127.0.0.1:PORT with `--move-to`) into OUT, de-identified with
the deployment's pseudonym key (`--pseudonym-key-file`, else the local key of training/dataset/pseudonym_key.py).
The link back from pseudonyms to originals goes to `--link`, by default next to OUT as `OUT.link.jsonl` (outside OUT,
which is what gets uploaded; owner-only). Prints what was pulled as JSON; exits 2 with a message on an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from launcher.pacs.deidentify import LinkFileError
from launcher.pacs.dimse import DimseAddress, parse_move_to, pull_dimse
from launcher.pacs.pull import PullError, pull_dicomweb
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
    pull = commands.add_parser("pull", help="pull studies over DICOMweb or DIMSE into OUT, de-identified")
    pull.add_argument("places", nargs="+", metavar="[URL] OUT", help="the DICOMweb root, e.g. "
                      "http://host:8042/dicom-web (none with --dimse), and the folder to write (what gets uploaded)")
    pull.add_argument("--study", action="append", default=[], help="a StudyInstanceUID (repeatable); default: all")
    pull.add_argument("--query", action="append", default=[], type=_query, help="a QIDO-RS filter KEY=VALUE")
    pull.add_argument("--link", type=Path, help="the link file (default: OUT.link.jsonl next to OUT)")
    pull.add_argument("--allow-burned-in", action="store_true", help="import instances that may show burned-in text")
    pull.add_argument("--pseudonym-key-file", type=Path, help="the deployment's key (default: the local key)")
    pull.add_argument("--workers", type=int, default=4, help="instances retrieved at once (default 4)")
    pull.add_argument("--dimse", type=_dimse, metavar="HOST:PORT:AET", help="pull over DIMSE from this PACS")
    pull.add_argument("--move-to", type=_move_to, metavar="AET:PORT",
                      help="with --dimse: C-MOVE to a storage SCP started here on 127.0.0.1:PORT (default C-GET)")
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


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        key = resolve_key(args.pseudonym_key_file, data_dirs=[args.out])
        common = dict(key=key, link_path=args.link or default_link_path(args.out), studies=args.study,
                      query=dict(args.query), allow_burned_in=args.allow_burned_in, workers=args.workers)
        if args.dimse is not None:
            report = pull_dimse(args.dimse, args.out, move_to=args.move_to, **common)
        else:
            report = pull_dicomweb(args.url, args.out, **common)
    except (PullError, LinkFileError, PseudonymKeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(report), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
