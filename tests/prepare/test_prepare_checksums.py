"""md5 lists in the datasets' published formats: ok, missing and corrupt files, and what a failure leaves behind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.prepare.trees import own_tree, read_json
from voxfast.errors import ListFormatError, VoxfastError
from voxfast.prepare import CommonOptions
from voxfast.prepare.checksums import CHECKSUM_PROBLEMS, md5_of, read_checksum_list, verify_checksums
from voxfast.prepare.own import OwnOptions, prepare_own


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    root = tmp_path / "downloads"
    root.mkdir()
    for name in ("vox1_dev_wav_partaa", "vox1_test_wav.zip", "musan.tar.gz", "my file.tar"):
        (root / name).write_bytes(name.encode() * 1000)
    return root


def test_every_published_format_is_read(downloads: Path, tmp_path: Path) -> None:
    lst = tmp_path / "sums.txt"
    a, b = _md5(b"vox1_dev_wav_partaa" * 1000), _md5(b"musan.tar.gz" * 1000)
    lst.write_text("\n".join([
        "# comment",
        f"{a}  vox1_dev_wav_partaa",  # md5sum (OpenSLR md5sum.txt)
        f"{b} *musan.tar.gz",  # md5sum binary mode
        f"vox1_test_wav.zip {a.upper()}",  # voxceleb_trainer lists/fileparts.txt
        f"http://www.openslr.org/resources/17/musan.tar.gz {b}",  # voxceleb_trainer lists/augment.txt
        f"vox1_dev_wav_parta* vox1_dev_wav.zip {a}",  # voxceleb_trainer lists/files.txt
        f"MD5 (musan.tar.gz) = {b}",  # BSD md5
        f"{a}  my file.tar",  # md5sum keeps spaces in the name
    ]) + "\n")
    entries = read_checksum_list(lst)
    assert [e.path for e in entries] == ["vox1_dev_wav_partaa", "musan.tar.gz", "vox1_test_wav.zip", "musan.tar.gz",
                                         "vox1_dev_wav.zip", "musan.tar.gz", "my file.tar"]
    assert [e.line for e in entries] == [2, 3, 4, 5, 6, 7, 8] and entries[2].md5 == a
    report = verify_checksums([lst], downloads)
    assert report.ok == ["vox1_dev_wav_partaa", "musan.tar.gz", "musan.tar.gz", "musan.tar.gz"]
    assert [line.split(": ")[1] for line in report.corrupt] == ["vox1_test_wav.zip", "my file.tar"]
    assert report.missing == [f"{lst}:6: vox1_dev_wav.zip: not found under {downloads.resolve()}"]


def test_a_line_in_no_format_names_file_and_line(tmp_path: Path) -> None:
    lst = tmp_path / "sums.txt"
    lst.write_text(f"{'0' * 32}  a.zip\nnot a checksum line\n")
    with pytest.raises(ListFormatError, match=r"sums.txt:2: not an md5 line"):
        read_checksum_list(lst)


def test_md5_is_streamed_and_correct(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 20_000)  # 5 MB: several read chunks
    assert md5_of(big) == hashlib.md5(big.read_bytes()).hexdigest()


def test_missing_files_fail_unless_allowed_and_corrupt_ones_always(downloads: Path, tmp_path: Path) -> None:
    src = own_tree(tmp_path / "speakers", {f"s{i}": {None: 3} for i in range(4)})
    out = tmp_path / "out"
    ok = f"{_md5(b'musan.tar.gz' * 1000)}  musan.tar.gz\n"
    (tmp_path / "ok.md5").write_text(ok)
    (tmp_path / "missing.md5").write_text(ok + f"{'1' * 32}  rirs_noises.zip\n")
    (tmp_path / "corrupt.md5").write_text(f"{'2' * 32}  musan.tar.gz\n")
    options = OwnOptions(test_speakers=2, trials=10)

    def run(lst: str, allow: bool = False) -> None:
        prepare_own(src, out, options, CommonOptions((str(tmp_path / lst),), str(downloads), allow))

    run("ok.md5")
    assert read_json(out)["counts"]["checksums"] == {"ok": 1, "missing": 0, "corrupt": 0}
    with pytest.raises(VoxfastError, match=r"1 file\(s\) named by the checksum lists are missing.*missing.md5:2"):
        run("missing.md5")
    assert not (out / "prepare.json").exists()  # the stale result of the first run is gone too
    assert "rirs_noises.zip" in (out / CHECKSUM_PROBLEMS).read_text()
    run("missing.md5", allow=True)
    assert any("rirs_noises.zip" in p for p in read_json(out)["problems"])
    with pytest.raises(VoxfastError, match=r"1 file\(s\) do not match their md5.*download those files again"):
        run("corrupt.md5", allow=True)
    assert not (out / "prepare.json").exists()
