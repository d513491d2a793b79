"""The datasets' own md5 lists, checked against the files the user has: missing and corrupt ones listed.

Accepted line formats (blank lines and ``#`` comments are skipped), one file per line:

* ``<md5>  <path>`` or ``<md5> *<path>``: GNU ``md5sum`` output, what ``md5sum -c`` reads; OpenSLR publishes
  this (e.g. ``openslr.org/resources/12/md5sum.txt``). The path is the rest of the line, so it may hold spaces.
* ``<path> <md5>``: voxceleb_trainer's ``lists/fileparts.txt`` (the VoxCeleb archive parts); a URL in place
  of the path (its ``lists/augment.txt``: MUSAN's and RIRS_NOISES' OpenSLR URLs) names its last segment.
* ``<parts> <file> <md5>``: voxceleb_trainer's ``lists/files.txt`` (``vox1_dev_wav_parta* vox1_dev_wav.zip
  <md5>``): the md5 is that of the concatenated ``<file>``.
* ``MD5 (<path>) = <md5>``: BSD / macOS ``md5``.

Paths are relative to the checksum root (SRC unless ``--checksum-root``). Files are hashed in a streamed
read (``hashlib.file_digest``): the VoxCeleb2 parts are ~8 GB each and must not be read into memory.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from voxfast.errors import ListFormatError, VoxfastError
from voxfast.prepare import CHECKSUM_PROBLEMS, CommonOptions, PrepareResult, absolute, problem_list

__all__ = ["CHECKSUM_PROBLEMS", "ChecksumEntry", "ChecksumReport", "apply_checksums", "md5_of",
           "read_checksum_list", "verify_checksums"]

log = logging.getLogger(__name__)

_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_BSD = re.compile(r"MD5 \((.+)\) = ([0-9a-fA-F]{32})")
_FORMATS = "'<md5>  <path>' (md5sum), '<path> <md5>', '<parts> <file> <md5>' or 'MD5 (<path>) = <md5>'"


@dataclass(frozen=True)
class ChecksumEntry:
    """One line of an md5 list: where it is (for messages), the file it names and the expected md5."""

    source: str
    line: int
    path: str
    md5: str

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass
class ChecksumReport:
    """Files whose md5 matched, and (``file:line: path: why`` lines) the missing and corrupt ones."""

    ok: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)


def _name(token: str) -> str:
    """A URL names its last path segment (the file as downloaded); anything else is a path."""
    if "://" in token:
        return token.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return token


def _parse(text: str) -> tuple[str, str] | None:
    """(md5, path) of one line in any accepted format, or None."""
    bsd = _BSD.fullmatch(text)
    if bsd:
        return bsd.group(2), bsd.group(1)
    if len(text) > 34 and _MD5.fullmatch(text[:32]) and text[32] == " " and text[33] in " *":
        return text[:32], text[34:]
    fields = text.split()
    if len(fields) in (2, 3) and _MD5.fullmatch(fields[-1]):
        return fields[-1], _name(fields[-2])
    return None


def read_checksum_list(path: str | Path) -> list[ChecksumEntry]:
    """Every entry of an md5 list; a line in no accepted format raises ListFormatError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise VoxfastError(f"checksum list not found: {path}; pass the md5 list file the dataset publishes")
    entries = []
    with path.open(encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, start=1):
            text = raw.rstrip("\r\n").strip()
            if not text or text.startswith("#"):
                continue
            parsed = _parse(text)
            if parsed is None:
                raise ListFormatError(f"{path}:{lineno}: not an md5 line: {text[:100]!r} "
                                      f"(expected {_FORMATS}; fix the line or delete it)")
            entries.append(ChecksumEntry(str(path), lineno, parsed[1], parsed[0].lower()))
    if not entries:
        raise VoxfastError(f"checksum list has no entries: {path}")
    return entries


def md5_of(path: Path) -> str:
    """Hex md5 of a file, read in chunks (never the whole file in memory)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def verify_checksums(lists: Sequence[str | Path], root: str | Path) -> ChecksumReport:
    """Hash every file the lists name under `root` (each file once, however often it is listed)."""
    root = absolute(root)
    report = ChecksumReport()
    digests: dict[Path, str] = {}
    for entry in (e for lst in lists for e in read_checksum_list(lst)):
        target = root / entry.path
        if not target.is_file():
            report.missing.append(f"{entry.where}: {entry.path}: not found under {root}")
            continue
        if target not in digests:
            log.info("md5 of %s (%.2f GB)", target, target.stat().st_size / 1e9)
            digests[target] = md5_of(target)
        if digests[target] == entry.md5:
            report.ok.append(entry.path)
        else:
            report.corrupt.append(f"{entry.where}: {entry.path}: md5 {digests[target]}, expected {entry.md5}")
    return report


def apply_checksums(result: PrepareResult, common: CommonOptions, default_root: Path, out: Path) -> None:
    """Check the lists in `common` into `result`; fail on a corrupt file, and on a missing one unless allowed.

    A corrupt archive always fails the stage, even with ``allow_missing``: what was extracted from it may be
    truncated, and training on it would fail (or worse, not) much later. The fix is a new download.
    """
    if not common.checksums:
        return
    root = absolute(common.checksum_root or default_root)
    report = verify_checksums(common.checksums, root)
    result.sources["checksums"] = [str(absolute(p)) for p in common.checksums]
    result.sources["checksum_root"] = str(root)
    result.counts["checksums"] = {"ok": len(report.ok), "missing": len(report.missing),
                                  "corrupt": len(report.corrupt)}
    result.summary.append(f"checksums: {len(report.ok)} ok, {len(report.missing)} missing, "
                          f"{len(report.corrupt)} corrupt (under {root})")
    if not report.missing and not report.corrupt:
        return
    listed = problem_list(out, CHECKSUM_PROBLEMS, report.corrupt + report.missing)
    if report.corrupt:
        raise VoxfastError(f"{len(report.corrupt)} file(s) do not match their md5, first: {report.corrupt[0]}; "
                           f"all {len(report.corrupt) + len(report.missing)} problems in {listed} "
                           "(download those files again)")
    if not common.allow_missing:
        raise VoxfastError(f"{len(report.missing)} file(s) named by the checksum lists are missing, first: "
                           f"{report.missing[0]}; full list in {listed} (download them, point --checksum-root at "
                           "their folder, or pass --allow-missing)")
    result.problems.extend(f"checksum: {line}" for line in report.missing)
