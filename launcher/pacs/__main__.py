"""`python -m launcher.pacs pull URL OUT [--study UID]... [--query KEY=VALUE]... [--link FILE] [--allow-burned-in]`.

Pulls studies over DICOMweb (URL is the DICOMweb root, e.g. http://host:8042/dicom-web) into OUT, de-identified with
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
    pull = commands.add_parser("pull", help="pull studies over DICOMweb into OUT, de-identified")
    pull.add_argument("url", help="the DICOMweb root, e.g. http://host:8042/dicom-web")
    pull.add_argument("out", type=Path, help="the folder to write (what gets uploaded)")
    pull.add_argument("--study", action="append", default=[], help="a StudyInstanceUID (repeatable); default: all")
    pull.add_argument("--query", action="append", default=[], type=_query, help="a QIDO-RS filter KEY=VALUE")
    pull.add_argument("--link", type=Path, help="the link file (default: OUT.link.jsonl next to OUT)")
    pull.add_argument("--allow-burned-in", action="store_true", help="import instances that may show burned-in text")
    pull.add_argument("--pseudonym-key-file", type=Path, help="the deployment's key (default: the local key)")
    pull.add_argument("--workers", type=int, default=4, help="instances retrieved at once (default 4)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
