"""The README and ``docs/`` stay consistent: every relative link and ``#anchor`` resolves, and every
``topkdice`` option they show exists in that subcommand's ``--help``.

Anchors follow GitHub's rule for headings: lowercase, spaces to ``-``, punctuation other than ``-`` and
``_`` removed, a repeated heading gets ``-1``, ``-2``, ... The ``--help`` texts come from the parser of
:mod:`nnunet_topkdice.cli`, built in-process.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from nnunet_topkdice.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...
_COMMAND = re.compile(r"(?:^|(?<=[\s$;&|(])|(?<=bin/))topkdice\s+\S")  # also .venv/bin/topkdice
_FLAG = re.compile(r"^(-{1,2}[A-Za-z][\w-]*)(?:=.*)?$")
_COMMAND_END = {";", "&&", "||", "|", ")", ">", "2>"}


# --- reading markdown ------------------------------------------------------------------------------


def split_markdown(text: str) -> tuple[list[str], list[str]]:
    """Split markdown into its prose lines and its fenced code blocks.

    Returns:
        (prose lines, code blocks); each code block is its lines joined with newlines, fences excluded.
    """
    prose: list[str] = []
    blocks: list[str] = []
    block: list[str] | None = None
    for line in text.splitlines():
        if _FENCE.match(line):
            if block is None:
                block = []
            else:
                blocks.append("\n".join(block))
                block = None
        elif block is None:
            prose.append(line)
        else:
            block.append(line)
    if block is not None:
        blocks.append("\n".join(block))
    return prose, blocks


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: ``"Set-up for nnU-Net"`` -> ``"set-up-for-nnu-net"``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = "".join(ch for ch in text.strip().lower() if ch.isalnum() or ch in "-_ ")
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of every heading outside code blocks, repeated headings numbered as GitHub does."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    for line in split_markdown(text)[0]:
        match = _HEADING.match(line)
        if match is None:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def link_targets(text: str) -> list[str]:
    """The targets of the markdown links ``[text](target)`` outside code blocks and inline code."""
    prose = "\n".join(split_markdown(text)[0])
    return _LINK.findall(_INLINE_CODE.sub("", prose))


def broken_links(path: Path) -> list[str]:
    """Every relative link of ``path`` whose file or ``#anchor`` does not exist, as readable messages."""
    problems = []
    for target in link_targets(path.read_text(encoding="utf-8")):
        if _EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{path.name}: link to missing file {target!r}")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked.read_text(encoding="utf-8"))):
            problems.append(f"{path.name}: link to missing anchor {target!r}")
    return problems


# --- the topkdice commands shown -------------------------------------------------------------------


def shown_commands(text: str) -> Iterator[list[str]]:
    """The words of every ``topkdice ...`` command in code blocks and inline code, ``topkdice`` dropped.

    Lines continued with a backslash are joined; a command ends at a shell operator or a comment.
    """
    prose, blocks = split_markdown(text)
    snippets = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    snippets += [span.strip("`") for line in prose for span in _INLINE_CODE.findall(line)]
    for snippet in snippets:
        for match in _COMMAND.finditer(snippet):
            words = _shell_words(snippet[match.start() :])[1:]
            end = next((i for i, word in enumerate(words) if word in _COMMAND_END), len(words))
            yield words[:end]


def _shell_words(command: str) -> list[str]:
    """``command`` split as the shell splits it; a command inside ``"$(...)"`` ends at its ``)``.

    Raises:
        ValueError: the command's quotes do not close.
    """
    try:
        return shlex.split(command, comments=True)
    except ValueError:
        return shlex.split(command.split(")")[0], comments=True)


@functools.cache
def help_text(words: tuple[str, ...]) -> str | None:
    """``topkdice WORDS --help`` as printed, or None when argparse refuses ``WORDS``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser().parse_args([*words, "--help"])
        except SystemExit as exit_:
            return out.getvalue() if exit_.code == 0 else None
    return None


def unknown_options(words: list[str]) -> list[str]:
    """The problems of one shown command: an unknown subcommand, or a flag its ``--help`` does not list.

    ``words`` follow ``topkdice``. Subcommands are the leading words whose ``--help`` differs from their
    parent's (``convert synapse``); a placeholder in capitals (``COMMAND``) stands for any subcommand.
    """
    path: tuple[str, ...] = ()
    help_ = help_text(path)
    assert help_ is not None, "topkdice --help failed"
    rest = list(words)
    while rest and not rest[0].startswith("-"):
        if rest[0].isupper():
            return []
        child = help_text((*path, rest[0]))
        if child is None:
            if not path:
                return [f"topkdice {rest[0]}: no such subcommand"]
            break
        if child == help_:
            break
        path, help_ = (*path, rest.pop(0)), child
    problems = []
    for word in rest:
        flag = _FLAG.match(word)
        if flag and not re.search(rf"(?<![\w-]){re.escape(flag.group(1))}(?![\w-])", help_):
            problems.append(f"topkdice {' '.join(path)}: {flag.group(1)} is not in its --help")
    return problems


def undocumented_options(path: Path) -> list[str]:
    """The problems of every ``topkdice`` command shown in ``path``."""
    return [
        f"{path.name}: {problem}"
        for words in shown_commands(path.read_text(encoding="utf-8"))
        for problem in unknown_options(words)
    ]


# --- the documentation ------------------------------------------------------------------------------


def test_the_docs_exist_and_the_readme_is_short() -> None:
    names = {path.name for path in DOC_FILES}
    assert {"README.md", "CHANGELOG.md", "getting_started.md", "loss.md", "benchmarks.md"} <= names
    assert (ROOT / "README.md").stat().st_size <= 12_000


def test_readme_holds_the_two_commands_verbatim() -> None:
    # .ci/run runs the test command as written here
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/topkdice demo" in readme
    test_command = (
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest -q -ra tests"
    )
    assert test_command in readme
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.parametrize("path", DOC_FILES, ids=[path.name for path in DOC_FILES])
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    assert broken_links(path) == []


@pytest.mark.parametrize("path", DOC_FILES, ids=[path.name for path in DOC_FILES])
def test_every_topkdice_option_shown_exists(path: Path) -> None:
    assert undocumented_options(path) == []


def test_the_docs_show_commands_of_every_subcommand() -> None:
    # the option check has something to check: every subcommand appears in some code of the docs
    shown = {words[0] for path in DOC_FILES for words in shown_commands(path.read_text()) if words}
    assert {"demo", "compare", "reproduce", "train", "convert", "evaluate", "show-ignore-map"} <= shown


def test_the_listed_subcommands_are_the_parsers() -> None:
    text = (ROOT / "docs" / "getting_started.md").read_text(encoding="utf-8")
    listing = re.search(r"`topkdice --help` lists the subcommands: (.*?); `topkdice COMMAND --help`", text, re.S)
    assert listing is not None
    listed = re.findall(r"`([a-z-]+)`", listing.group(1))
    [subparsers] = [a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    assert sorted(listed) == sorted(subparsers.choices)


# --- the checker itself -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Set-up for nnU-Net", "set-up-for-nnu-net"),
        ("The k=100 control", "the-k100-control"),
        ("Region-based (sigmoid) variant", "region-based-sigmoid-variant"),
        ("Does TopK-Dice help on my data? `topkdice compare`", "does-topk-dice-help-on-my-data-topkdice-compare"),
        ("snake_case and [a link](x.md)", "snake_case-and-a-link"),
    ],
)
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_anchors_skip_code_and_number_repeats() -> None:
    text = "# Title\n\n```bash\n# not a heading\n```\n\n## Part\n\n## Part\n"
    assert anchors(text) == {"title", "part", "part-1"}


def test_broken_links_are_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[good](other.md) [good anchor](other.md#a-section) [here](#page) [web](https://example.org/x#y)\n"
        "[missing file](nowhere.md) [missing anchor](other.md#no-such-section) [missing here](#nope)\n"
        "`[in code](ignored.md)`\n\n```\n[in a block](ignored.md)\n```\n"
    )
    assert broken_links(page) == [
        "page.md: link to missing file 'nowhere.md'",
        "page.md: link to missing anchor 'other.md#no-such-section'",
        "page.md: link to missing anchor '#nope'",
    ]
    assert broken_links(tmp_path / "other.md") == []


def test_shown_commands_are_read_from_code() -> None:
    text = (
        "Run `topkdice train --seed 1` or\n\n```bash\n"
        "topkdice evaluate -r labels \\\n    -p 'A=x' -o out   # a comment --not-a-flag\n"
        "nnUNet_n_proc_DA=0 topkdice compare -d 4 && echo --done\n"
        'export nnUNet_extTrainer="$(topkdice trainer-dir)"\n'
        "ls topkdice_demo/logs && .venv/bin/topkdice demo -w here\n"
        "nnUNetv2_predict -o preds/topkdice -d 4\n```\n"
    )
    assert sorted(shown_commands(text)) == [
        ["compare", "-d", "4"],
        ["demo", "-w", "here"],
        ["evaluate", "-r", "labels", "-p", "A=x", "-o", "out"],
        ["train", "--seed", "1"],
        ["trainer-dir"],
    ]


def test_unknown_options_and_subcommands_are_reported() -> None:
    assert unknown_options(["compare", "-d", "4", "--seeds", "0", "1", "--dry-run"]) == []
    assert unknown_options(["convert", "synapse", "-i", "RawData", "--overwrite"]) == []
    assert unknown_options(["COMMAND", "--help"]) == []
    assert unknown_options(["compare", "-d", "4", "--no-such-option"]) == [
        "topkdice compare: --no-such-option is not in its --help"
    ]
    assert unknown_options(["convert", "acdc", "--seed", "0"]) == ["topkdice convert acdc: --seed is not in its --help"]
    assert unknown_options(["frobnicate", "-x"]) == ["topkdice frobnicate: no such subcommand"]


def test_a_doc_with_an_unknown_option_fails(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```bash\ntopkdice evaluate -r labels --no-such-flag\n```\n")
    assert undocumented_options(page) == ["page.md: topkdice evaluate: --no-such-flag is not in its --help"]


@pytest.mark.parametrize("seed_effects", [[0.10, -0.02], [0.03, 0.026, 0.034, 0.028, 0.032]], ids=["two", "five"])
def test_the_statistics_page_prints_what_evaluate_prints(seed_effects: list[float]) -> None:
    """The example sentences of docs/statistics.md, recomputed from their fixture with ``evaluate``'s
    defaults (10,000 bootstrap resamples: the tests' 2,000 moved the last digit of an interval)."""
    import numpy as np
    from test_evaluation_crossed import _table

    from nnunet_topkdice.evaluation.results import comparison_entry, with_verdicts
    from nnunet_topkdice.evaluation.tables import comparison_sentence

    differences = _table(seed_effects)
    baseline = np.full(differences.shape, 0.7)[:, :, None]
    entry = comparison_entry("CE + topK-Dice", "CE + Dice", baseline + differences[:, :, None], baseline, ["a"])
    sentence = comparison_sentence(with_verdicts([entry])[0])
    assert sentence.startswith("CE + topK-Dice vs CE + Dice: ")
    assert sentence in (ROOT / "docs" / "statistics.md").read_text(encoding="utf-8")
