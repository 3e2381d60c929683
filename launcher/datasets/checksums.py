"""SHA-256 checksums of local files in the forms Amazon S3 reports them, to tell whether an object holds a file.

S3 stores the checksum an upload declares (ChecksumAlgorithm=SHA256) and verifies every byte against it; HeadObject
with ChecksumMode=ENABLED returns it as `ChecksumSHA256`, base64. Its form depends on how the object was uploaded:

- one PutObject: SHA-256 of the whole object (ChecksumType FULL_OBJECT);
- a multipart upload: a checksum of checksums (ChecksumType COMPOSITE; S3 offers full-object checksums for
  multipart uploads only with the CRC algorithms): SHA-256 of the concatenated binary SHA-256 digests of the parts,
  which AWS reports followed by `-<number of parts>`. So the local file must be cut into the same parts: every part
  but the last has the size of part 1 (HeadObject with PartNumber=1 tells it).

ETags are no substitute: the ETag of a KMS-encrypted or multipart object is not the MD5 of its content.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass

READ_SIZE = 1024 * 1024
_PARTS_SUFFIX = re.compile(r"^(?P<value>[A-Za-z0-9+/=]+)(?:-(?P<parts>\d+))?$")
_MULTIPART_ETAG = re.compile(r'^"?[0-9a-fA-F]+-(?P<parts>\d+)"?$')


@dataclass(frozen=True)
class RemoteChecksum:
    """An object's SHA-256 checksum as S3 reports it.

    Attributes:
        value: the base64 checksum, without any `-N` suffix.
        parts: the number of parts of a multipart (composite) checksum; None for a whole-object checksum.
    """

    value: str
    parts: int | None

    @classmethod
    def from_head(cls, head: dict[str, object]) -> RemoteChecksum | None:
        """Read a HeadObject (ChecksumMode=ENABLED) response; None when the object has no SHA-256 checksum.

        The composite form is recognised by its `-N` suffix, or by a COMPOSITE ChecksumType, or, where a server
        reports neither (the local emulator), by the multipart ETag's `-N`.

        Args:
            head: the response.
        """
        text = head.get("ChecksumSHA256")
        if not isinstance(text, str) or not text:
            return None
        match = _PARTS_SUFFIX.match(text.strip())
        if not match:
            return None
        parts = match["parts"]
        if parts is None:
            etag = _MULTIPART_ETAG.match(str(head.get("ETag") or ""))
            if etag and head.get("ChecksumType") != "FULL_OBJECT":
                parts = etag["parts"]
        return cls(value=match["value"], parts=int(parts) if parts is not None else None)

    def __str__(self) -> str:
        return self.value if self.parts is None else f"{self.value}-{self.parts}"


def sha256_file(path: str | os.PathLike[str]) -> bytes:
    """The SHA-256 digest of a whole file.

    Args:
        path: the file.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_SIZE):
            digest.update(chunk)
    return digest.digest()


def composite_sha256(path: str | os.PathLike[str], part_size: int) -> tuple[str, int]:
    """The checksum S3 computes for a multipart upload of a file cut into parts of `part_size` bytes.

    Args:
        path: the file.
        part_size: the size of every part but the last, in bytes (> 0).

    Returns:
        (base64 checksum of the part checksums, number of parts).
    """
    if part_size <= 0:
        raise ValueError(f"part_size must be > 0 bytes; got {part_size}")
    part_digests = []
    with open(path, "rb") as fh:
        while True:
            digest, remaining, read_any = hashlib.sha256(), part_size, False
            while remaining and (chunk := fh.read(min(READ_SIZE, remaining))):
                digest.update(chunk)
                remaining -= len(chunk)
                read_any = True
            if not read_any:
                break
            part_digests.append(digest.digest())
    combined = hashlib.sha256(b"".join(part_digests)).digest()
    return base64.b64encode(combined).decode("ascii"), len(part_digests)


def to_base64(digest: bytes) -> str:
    """A binary digest in the base64 form S3 uses."""
    return base64.b64encode(digest).decode("ascii")
