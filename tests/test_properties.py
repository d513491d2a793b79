"""Property tests: random and near-valid input to the list, trial and score readers and to the config coercion.

A user's file or override is either accepted, and the result then keeps the reader's promises, or refused with a
:class:`~voxfast.errors.VoxfastError` that says where the problem is (a ListFormatError starting ``file:line:``,
a ConfigError listing the bad keys). Any other exception is a traceback into the parser: a bug.

Each reader is checked against a small independent model of its format (what a valid file means, and which line
is the first bad one), written from the module docstrings, so the properties also pin which line an error names.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import yaml
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from voxfast.config import Config, config_to_dict, load_config, load_config_dict, save_config, with_overrides
from voxfast.data.manifest import Trial, Utterance, read_scores, read_trials, read_utterances
from voxfast.errors import ConfigError, ListFormatError, VoxfastError

# No example database: every run draws fresh examples (the @example cases pin the bugs found so far). Hypothesis
# still keeps caches in .hypothesis/, which it gitignores itself.
PROPERTY = settings(max_examples=100, deadline=None, database=None, derandomize=True)  # CI: the same examples each run

# --------------------------------------------------------------------------------------------------
# Text that users' files hold: near-valid lines, odd tokens, odd whitespace, comments, BOMs, mixed newlines.

CHARS = st.characters(codec="utf-8")  # any character a UTF-8 file can hold (no lone surrogates), NUL included
# Field separators: str.split() splits on all of them; \x1c, \x85 and \u2028 do not end a line of a text-mode file.
SEPARATORS = [" ", "\t", "  ", " \t ", "\x0b", "\x0c", "\xa0", "\u2003", "\u3000", "\x1c", "\x85", "\u2028"]
NEWLINES = ["\n", "\r\n", "\r"]
ODD_TOKENS = ["0", "1", "2", "x", "-1", "01", "1.0", "target", "nontarget", "Target", "#", "#x", "-", "a|", "|",
              "nan", "NaN", "inf", "-inf", "infinity", "1e400", "-1e-400", "1_000", "0x10", "١٢", "\x00", "\ufeff",
              "é", "語", "🎤", "a/b.wav", "../up.wav", "/abs/x.wav", ".", "9" * 400]


def tokens(*common: str) -> st.SearchStrategy[str]:
    """Mostly `common` tokens (so ids repeat and labels are valid often), else odd or random ones."""
    random = st.one_of(st.sampled_from(ODD_TOKENS), st.text(CHARS, min_size=1, max_size=6))
    return st.one_of(st.sampled_from(common), st.sampled_from(common), random) if common else random


@st.composite
def lines_of(draw: st.DrawFn, *columns: st.SearchStrategy[str]) -> str:
    """One line: usually a token of each column, else another count of tokens, a comment, a blank or random text."""
    kind = draw(st.sampled_from(["fields"] * 12 + ["count", "comment", "blank", "random"]))
    if kind == "comment":
        return draw(st.sampled_from(["", " ", "\t"])) + "#" + draw(st.text(CHARS, max_size=10))
    if kind == "blank":
        return draw(st.sampled_from(["", " ", "\t \x0c", "\u3000"]))
    if kind == "random":
        return draw(st.text(CHARS, max_size=20))
    if kind == "fields":
        parts = [draw(column) for column in columns]
    else:
        parts = [draw(st.one_of(*columns)) for _ in range(draw(st.integers(0, 5)))]
    text = "".join(part + draw(st.sampled_from(SEPARATORS)) for part in parts).removesuffix(" ")
    return draw(st.sampled_from(["", " ", "\t"])) + text


@st.composite
def files_of(draw: st.DrawFn, line: st.SearchStrategy[str], max_lines: int = 10) -> str:
    """A file's text: lines ending in mixed newlines, maybe no final newline, maybe a BOM."""
    lines = draw(st.lists(line, max_size=max_lines))
    text = "".join(item + draw(st.sampled_from(NEWLINES)) for item in lines)
    if lines and draw(st.booleans()):
        text = text.rstrip("\r\n")
    return draw(st.sampled_from(["", "", "\ufeff"])) + text


def physical_lines(text: str) -> list[str]:
    """The lines a text-mode reader sees: a leading BOM dropped, lines ended by \\n, \\r\\n or \\r only."""
    lines = re.split(r"\r\n|\r|\n", text.removeprefix("\ufeff"))
    return lines[:-1] if lines[-1] == "" else lines


def data_lines(lines: list[str]) -> list[tuple[int, list[str]]]:
    """(1-based line number, fields) of the lines that are neither blank nor a comment."""
    return [(n, line.split()) for n, line in enumerate(lines, start=1)
            if line.split() and not line.split()[0].startswith("#")]


def named_line(error: ListFormatError, path: Path) -> int:
    """The line a ListFormatError names; its message must start with ``path:N:``."""
    match = re.match(re.escape(str(path)) + r":(\d+): ", str(error))
    assert match, f"message does not start with {path}:N: : {error}"
    return int(match.group(1))


def outcome(read: Callable[[], Any]) -> Any:
    """The reader's result, or the VoxfastError it raised (any other exception propagates and fails the test)."""
    try:
        got = read()
    except VoxfastError as e:
        got = e
    event(type(got).__name__)  # --hypothesis-show-statistics: how often each outcome was drawn
    return got


def read_back(reader: Callable[[Path], Any], name: str, text: str) -> tuple[Path, Any]:
    """`text` written as UTF-8 to a fresh temporary `name`, and :func:`outcome` of `reader` on it; the path (gone
    by then) is returned for the messages that name it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(text.encode("utf-8"))
        return path, outcome(lambda: reader(path))


def check_refusal(got: Any, expected: Any, path: Path, empty_words: str) -> None:
    """`got` (an error) is the refusal `expected` (a bad line number, or "empty") calls for."""
    if isinstance(got, ListFormatError):
        assert isinstance(expected, int), f"refused a valid file: {got}"
        assert named_line(got, path) == expected, f"expected line {expected} named: {got}"
    else:
        assert type(got) is VoxfastError and expected == [], f"expected {expected!r}, got {got!r}"
        assert str(path) in str(got) and empty_words in str(got), str(got)


# --------------------------------------------------------------------------------------------------
# VoxCeleb utterance lists: `speaker relpath`, relpath unique.


def expected_utterances(text: str, base: str) -> list[Utterance] | int:
    """The utterances a VoxCeleb list holds, or the number of its first bad line."""
    utts, seen = [], set()
    for n, fields in data_lines(physical_lines(text)):
        if len(fields) != 2 or fields[1] in seen:
            return n
        seen.add(fields[1])
        utts.append(Utterance(utt=fields[1], spk=fields[0], path=os.path.normpath(os.path.join(base, fields[1]))))
    return utts


@PROPERTY
@given(text=files_of(lines_of(tokens("spk1", "spk2", "é"), tokens("a.wav", "b.wav", "s/c.wav", "/abs/d.wav"))))
def test_voxceleb_list_gives_its_utterances_or_names_the_bad_line(text):
    path, got = read_back(read_utterances, "list.txt", text)
    expected = expected_utterances(text, os.path.abspath(path.parent))
    if isinstance(got, VoxfastError):
        check_refusal(got, expected, path, "no utterances")
        return
    assert got == expected and got
    assert len({u.utt for u in got}) == len(got)
    assert all(os.path.isabs(u.path) and u.spk.split() == [u.spk] and u.utt.split() == [u.utt] for u in got)


# --------------------------------------------------------------------------------------------------
# Kaldi data directories: wav.scp (`utt path`, no pipes) + utt2spk (`utt speaker`), in wav.scp order.


def expected_kaldi(wav_scp: str, utt2spk: str | None, root: str) -> list[Utterance] | tuple[str, int | None] | str:
    """The utterances of a Kaldi directory, or (file, first bad line; None: a missing speaker), or what is missing."""
    wavs: dict[str, str] = {}
    for n, fields in data_lines(physical_lines(wav_scp)):
        if fields[-1].endswith("|") or fields[-1] == "-" or len(fields) != 2 or fields[0] in wavs:
            return "wav.scp", n
        wavs[fields[0]] = os.path.normpath(os.path.join(root, fields[1]))
    if not wavs:
        return "wav.scp has no utterances"
    if utt2spk is None:
        return "utt2spk not found"
    spk_of: dict[str, str] = {}
    for n, fields in data_lines(physical_lines(utt2spk)):
        if len(fields) != 2 or fields[0] in spk_of:
            return "utt2spk", n
        spk_of[fields[0]] = fields[1]
    if any(utt not in spk_of for utt in wavs):
        return "utt2spk", None
    return [Utterance(utt=utt, spk=spk_of[utt], path=p) for utt, p in wavs.items()]


KALDI_UTTS, KALDI_SPKS = tokens("u1", "u2", "u3", "u4"), tokens("spk1", "spk2")
WAV_SCP = files_of(lines_of(KALDI_UTTS, tokens("a.wav", "b.flac", "/abs/c.wav")), max_lines=5)


@st.composite
def utt2spk_files(draw: st.DrawFn, wav_scp: str) -> str | None:
    """No utt2spk, a random one, or one written for wav.scp's utterances (perhaps with a line left out)."""
    kind = draw(st.sampled_from(["none", "random", "matching", "matching"]))
    if kind == "none":
        return None
    if kind == "random":
        return draw(files_of(lines_of(KALDI_UTTS, KALDI_SPKS), max_lines=5))
    utts = [fields[0] for _, fields in data_lines(physical_lines(wav_scp))]
    lines = [f"{utt} {draw(KALDI_SPKS)}" for utt in draw(st.permutations(utts))]
    if lines and draw(st.booleans()):
        del lines[draw(st.integers(0, len(lines) - 1))]
    return "\n".join(lines)


@PROPERTY
@given(data=st.data(), wav_scp=WAV_SCP)
def test_kaldi_dir_gives_its_utterances_or_names_the_bad_line(data, wav_scp):
    utt2spk = data.draw(utt2spk_files(wav_scp), label="utt2spk")
    with tempfile.TemporaryDirectory() as tmp:
        folder, root = Path(tmp) / "data", os.path.abspath(tmp)
        folder.mkdir()
        (folder / "wav.scp").write_bytes(wav_scp.encode("utf-8"))
        if utt2spk is not None:
            (folder / "utt2spk").write_bytes(utt2spk.encode("utf-8"))
        got = outcome(lambda: read_utterances(folder, root))
        expected = expected_kaldi(wav_scp, utt2spk, root)
        if isinstance(got, ListFormatError):
            assert isinstance(expected, tuple), f"expected {expected!r}, got {got!r}"
            name, line = expected
            if line is None:
                assert str(got).startswith(f"{folder / name}: ") and "have no speaker" in str(got), str(got)
            else:
                assert named_line(got, folder / name) == line, str(got)
        elif isinstance(got, VoxfastError):
            assert isinstance(expected, str) and expected in str(got), f"expected {expected!r}, got {got!r}"
        else:
            assert got == expected and got


# --------------------------------------------------------------------------------------------------
# Trial lists: VoxCeleb `label enroll test`, Kaldi `enroll test target|nontarget` or `enroll test`; the first data
# line fixes the format (VoxCeleb when it fits both); exact repeats count once, a pair with two labels is refused.


def trial_readings(fields: list[str]) -> dict[str, Trial]:
    """The formats a line fits (VoxCeleb first), with the trial it means in each."""
    fits = {}
    if len(fields) == 3 and fields[0] in ("0", "1"):
        fits["VoxCeleb"] = Trial(enroll=fields[1], test=fields[2], label=int(fields[0]))
    if len(fields) == 3 and fields[2] in ("target", "nontarget"):
        fits["Kaldi"] = Trial(enroll=fields[0], test=fields[1], label=int(fields[2] == "target"))
    if len(fields) == 2:
        fits["unlabelled"] = Trial(enroll=fields[0], test=fields[1], label=None)
    return fits


def expected_trials(text: str) -> list[Trial] | int:
    """The distinct trials of a trial list in file order, or the number of its first bad line."""
    fmt, trials = None, {}
    for n, fields in data_lines(physical_lines(text)):
        fits = trial_readings(fields)
        fmt = fmt or next(iter(fits), None)
        if fmt not in fits:
            return n
        trial = fits[fmt]
        if trials.setdefault((trial.enroll, trial.test), trial).label != trial.label:
            return n
    return list(trials.values())


TRIAL_IDS, VOX_LABELS, KALDI_LABELS = tokens("a", "b", "id/x.wav"), tokens("0", "1"), tokens("target", "nontarget")
TRIAL_LINES = [lines_of(VOX_LABELS, TRIAL_IDS, TRIAL_IDS), lines_of(TRIAL_IDS, TRIAL_IDS, KALDI_LABELS),
               lines_of(TRIAL_IDS, TRIAL_IDS)]


@PROPERTY
@given(data=st.data(), fmt=st.sampled_from(TRIAL_LINES))
def test_trial_list_gives_labels_0_1_or_none_or_names_the_bad_line(data, fmt):
    """Mostly lines of one format, sometimes a line of another."""
    text = data.draw(files_of(st.one_of(*[fmt] * 8, *TRIAL_LINES)), label="text")
    path, got = read_back(read_trials, "trials.txt", text)
    expected = expected_trials(text)
    if isinstance(got, VoxfastError):
        check_refusal(got, expected, path, "no trials")
        return
    assert got == expected and got
    labels = {t.label for t in got}
    assert labels <= {0, 1} or labels == {None}, labels  # one format per file: all labelled or none
    assert len({(t.enroll, t.test) for t in got}) == len(got)


# --------------------------------------------------------------------------------------------------
# Score files: `enroll test score`, score any finite number float() reads (NaN, inf and 1e400 name their line).


def expected_scores(text: str) -> tuple[list[tuple[str, str]], list[float]] | int:
    """The pairs and scores of a score file, or the number of its first bad line."""
    pairs, values = [], []
    for n, fields in data_lines(physical_lines(text)):
        try:
            values.append(float(fields[2]) if len(fields) == 3 else None)
        except ValueError:
            return n
        if values[-1] is None or not math.isfinite(values[-1]):
            return n
        pairs.append((fields[0], fields[1]))
    return pairs, values


SCORE_IDS = tokens("a", "b", "c/d.wav")
SCORES = st.one_of(st.floats().map(repr), st.floats().map(lambda v: f"{v:.6f}"), tokens("1e400", "-0", "1_0", ".5"))


@PROPERTY
@given(text=files_of(lines_of(SCORE_IDS, SCORE_IDS, SCORES)))
def test_score_file_gives_one_float64_per_pair_or_names_the_bad_line(text):
    path, got = read_back(read_scores, "scores.txt", text)
    expected = expected_scores(text)
    if isinstance(got, VoxfastError):
        check_refusal(got, expected if isinstance(expected, int) else expected[0], path, "no scores")
        return
    pairs, scores = got
    assert pairs == expected[0] and pairs
    assert scores.dtype == np.float64 and scores.shape == (len(pairs),)
    np.testing.assert_array_equal(scores, np.asarray(expected[1], dtype=np.float64))


# --------------------------------------------------------------------------------------------------
# Bytes that are not UTF-8 text (Latin-1, UTF-16, random binary) to every reader.


def _read_kaldi(path: Path) -> Any:
    (path.parent / "utt2spk").write_bytes(path.read_bytes())
    path.rename(path.parent / "wav.scp")
    return read_utterances(path.parent, path.parent)


READERS = {"list": read_utterances, "trials": read_trials, "scores": read_scores, "kaldi": _read_kaldi}
NOT_UTF8 = st.one_of(
    st.binary(max_size=120),
    files_of(lines_of(*[tokens("0", "1", "a", "é")] * 3), max_lines=4).map(lambda t: t.encode("utf-16")),
    files_of(lines_of(*[tokens("a", "b", "é")] * 2), max_lines=4).map(lambda t: t.encode("latin-1", "replace")),
    st.tuples(st.text(CHARS, max_size=20), st.binary(min_size=1, max_size=8)).map(lambda p: p[0].encode() + p[1]),
)


@pytest.mark.parametrize("reader", list(READERS))
@settings(max_examples=50, deadline=None, database=None, derandomize=True)
@given(data=NOT_UTF8)
def test_bytes_that_are_not_utf8_are_refused_with_the_file_named(reader, data):
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.txt"
        path.write_bytes(data)
        got = outcome(lambda: READERS[reader](path))
    if isinstance(got, ListFormatError):
        assert re.search(r":\d+: ", str(got)) or "have no speaker" in str(got), str(got)
    elif isinstance(got, VoxfastError):
        assert tmp in str(got), str(got)
        assert text is not None or "not UTF-8" in str(got), str(got)
    else:
        assert text is not None, f"read bytes that are not UTF-8: {data!r}"


# --------------------------------------------------------------------------------------------------
# Config: `section.key=value` overrides, checkpoint dicts and YAML files.

SECTIONS = typing.get_type_hints(Config)
FIELDS = {name: typing.get_type_hints(cls) for name, cls in SECTIONS.items()}
VALUE_TEXT = ["0", "1", "-1", "2", "3", "7", "8", "128", "0.5", "1e-3", "1e400", "-1e400", "nan", "-nan", "inf",
              "-inf", "NaN", "infinity", "1" * 400, "-" + "9" * 400, "9" * 5000, "true", "false", "yes", "Off", "null",
              "none", "~", "", "[]", "()", "[1,2]", "1,2", "(0, 15)", "[0,1,1,1,1]", "1,1,1,1,1", "[3,7]", "[nan, 1]",
              "[inf,inf]", "[1e400, 0]", "a,b", ",", "[", "aam", "sap", "cpu", "crops", "mean_pairwise", "proto",
              "ge2e", "fp16", "step", "linear", "device", "group", "1_000", "0x10", "١٢", "\x00", "é", " 4 "]
HUGE = [10**400, -(10**400), 2**63, 2**1024]


def typed_values(tp: Any) -> st.SearchStrategy[Any]:
    """Values of roughly the field's type as YAML or a checkpoint holds them, extremes included."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(typed_values(a) for a in args))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(typed_values(args[0]), max_size=3)
        return st.tuples(*(typed_values(a) for a in args)).map(list)
    return {
        type(None): st.none(),
        bool: st.booleans(),
        int: st.one_of(st.integers(-2, 300), st.integers(), st.sampled_from(HUGE)),
        float: st.one_of(st.floats(-10, 300), st.floats(), st.integers(-2, 300), st.sampled_from(HUGE + VALUE_TEXT)),
        str: st.text(CHARS, max_size=8),
    }[tp]


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE), st.floats(),
                    st.sampled_from(VALUE_TEXT), st.text(CHARS, max_size=8))
ANY_VALUE = st.one_of(SCALARS, SCALARS, st.lists(SCALARS, max_size=6), st.dictionaries(st.text(CHARS, max_size=4),
                                                                                      SCALARS, max_size=3))


@st.composite
def sections(draw: st.DrawFn, name: str) -> Any:
    """A section's mapping: known keys with typed or random values, sometimes an unknown key, rarely no mapping."""
    fields = FIELDS.get(name, {})
    if not fields or draw(st.integers(0, 19)) == 0:
        return draw(ANY_VALUE)
    section = {}
    for key in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True)):
        section[key] = draw(typed_values(fields[key]) if draw(st.integers(0, 3)) else ANY_VALUE)
    if draw(st.integers(0, 9)) == 0:
        section[draw(st.text(CHARS, max_size=6))] = draw(ANY_VALUE)
    return section


@st.composite
def raw_configs(draw: st.DrawFn) -> dict[Any, Any]:
    """A config's dict form as a checkpoint or YAML file holds it: a few sections, rarely an unknown one."""
    names = draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=3, unique=True))
    if draw(st.integers(0, 9)) == 0:
        names.append(draw(st.text(CHARS, max_size=6)))
    return {name: draw(sections(name)) for name in names}


def as_text(value: Any) -> str:
    """How a value is typed on the command line: `null`, `true`, `a,b` for a list."""
    if value is None or isinstance(value, bool):
        return str(value).lower().replace("none", "null")
    return ",".join(map(as_text, value)) if isinstance(value, list) else str(value)


@st.composite
def overrides(draw: st.DrawFn) -> str:
    """A command-line override: mostly `section.key=value` with known names, else malformed."""
    known = st.integers(0, 4).map(bool)  # 4 in 5: a known section, a known key, a value of the key's type
    section = draw(st.sampled_from(sorted(SECTIONS)) if draw(known) else st.text(CHARS, max_size=5))
    keys = sorted(FIELDS.get(section, {"x": None}))
    key = draw(st.sampled_from(keys) if draw(known) else st.text(CHARS, max_size=5))
    if key in FIELDS.get(section, {}) and draw(known):
        value = draw(typed_values(FIELDS[section][key]).map(as_text))
    else:
        value = draw(st.sampled_from(VALUE_TEXT) | st.text(CHARS, max_size=10) | st.floats().map(repr)
                     | st.integers().map(str))
    return draw(st.sampled_from([f"{section}.{key}={value}"] * 14 + [
        f"{section}={value}", f"{section}.{key}.{key}={value}", f".{key}={value}", f"{section}.{key}",
        f" {section} . {key} = {value} ", f"{section}.{key}={value}={value}", value]))


def leaves(cfg: Config) -> dict[str, tuple[Any, Any]]:
    """`section.key -> (value, annotated type)` of every field."""
    return {f"{name}.{key}": (getattr(getattr(cfg, name), key), tp)
            for name, fields in FIELDS.items() for key, tp in fields.items()}


def fits(value: Any, tp: Any) -> bool:
    """Whether a validated value has its field's type (bool is not an int, an int is not a float)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value) if isinstance(value, tuple) else ()
        return isinstance(value, tuple) and len(value) == len(args) and all(map(fits, value, args))
    return type(value) is tp


def check_config(got: Config | VoxfastError) -> None:
    """A valid config has every field of its type, finite floats and survives its dict form; else a ConfigError."""
    if isinstance(got, VoxfastError):
        assert type(got) is ConfigError and str(got).startswith("invalid config ("), repr(got)
        return
    assert isinstance(got, Config)
    for name, (value, tp) in leaves(got).items():
        assert fits(value, tp), f"{name} = {value!r} is not a {tp}"
        values = value if isinstance(value, tuple) else (value,)
        assert all(math.isfinite(v) for v in values if isinstance(v, float)), f"{name} = {value!r}"
    assert load_config_dict(config_to_dict(got)) == got


@PROPERTY
@given(items=st.lists(overrides(), min_size=1, max_size=4))
@example(items=["train.micro_batch=0"])  # was ZeroDivisionError (global_batch % micro_batch)
@example(items=["data.n_per_speaker=0"])  # was ZeroDivisionError (micro_batch % n_per_speaker)
@example(items=["train.lr=" + "1" * 400, "eval.crop_seconds=1e400", "train.epochs=" + "9" * 5000])
def test_overrides_give_a_typed_finite_config_or_a_config_error(items):
    check_config(outcome(lambda: load_config(overrides=items)))


@PROPERTY
@given(items=st.lists(overrides(), min_size=1, max_size=3))
def test_overrides_of_a_checkpoint_config_give_a_typed_finite_config_or_a_config_error(items):
    check_config(outcome(lambda: with_overrides(Config(), items)))


@PROPERTY
@given(raw=raw_configs())
@example(raw={"train": {"lr": 10**400}})  # was OverflowError: int too large to convert to float
@example(raw={"augment": {"noise_snr": [0, -(2**1024)]}, "train": {"micro_batch": 0}})
def test_checkpoint_dict_gives_a_typed_finite_config_or_a_config_error(raw):
    check_config(outcome(lambda: load_config_dict(raw)))


def yaml_text(raw: dict[Any, Any]) -> str:
    try:
        return yaml.safe_dump(raw, allow_unicode=True)
    except ValueError:  # an int too long to print (2**1024 is not, 10**5000 would be)
        return ""


YAML_SCALARS = ["2024-02-30", "2024-02-03", "12:30:00", "9" * 5000, "!!float abc", "!!int x", "!!binary a",
                "!!timestamp x", "0o17", "0x1F", "1_000", ".inf", "-.nan", "1e3", "1.0e+3", "yes", "~", "[1, 2]",
                "{a: 1}", "&x [*x]", "'quoted'", "\"esc\\x00\"", "|\n  block"]


@st.composite
def yaml_files(draw: st.DrawFn) -> bytes:
    """A YAML config file: a dumped raw config, a hand-written one with YAML's odd scalars, or random text/bytes."""
    kind = draw(st.sampled_from(["dump", "dump", "scalars", "text", "bytes"]))
    if kind == "dump":
        return yaml_text(draw(raw_configs())).encode()
    if kind == "scalars":
        entries = draw(st.lists(st.tuples(st.sampled_from(sorted(SECTIONS)), st.sampled_from(YAML_SCALARS)),
                                min_size=1, max_size=3))
        lines = []
        for section, scalar in entries:
            key = draw(st.sampled_from(sorted(FIELDS[section])))
            lines.append(f"{section}:\n  {key}: {scalar}\n")
        return "".join(lines).encode()
    if kind == "text":
        return draw(st.text(CHARS, max_size=40)).encode()
    return draw(st.binary(max_size=40))


@PROPERTY
@given(data=yaml_files())
@example(data=b"\x80")  # was UnicodeDecodeError
@example(data=b"train:\n  out_dir: 2024-02-30\n")  # was ValueError: day is out of range for month
@example(data=b"train:\n  epochs: " + b"9" * 5000)  # was ValueError: exceeds the limit (4300 digits)
@example(data=b"train:\n  out_dir: !!timestamp x\n")  # was AttributeError inside PyYAML
@example(data=b"[" * 5000)  # was RecursionError
@example(data="train:\n  device: é\n".encode("utf-16"))  # UTF-16 with a BOM is YAML too
def test_yaml_config_file_gives_a_typed_finite_config_or_a_config_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(data)
        got = outcome(lambda: load_config(path))
    if isinstance(got, ConfigError) and not str(got).startswith("invalid config ("):
        assert str(got).startswith(f"{path}: "), str(got)  # the file itself is unreadable: named with the problem
        return
    check_config(got)


@PROPERTY
@given(raw=raw_configs())
def test_valid_config_survives_save_and_load(raw):
    cfg = outcome(lambda: load_config_dict(raw))
    if isinstance(cfg, VoxfastError):
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_config(cfg, Path(tmp) / "config.yaml")
        assert load_config(Path(tmp) / "config.yaml") == cfg
