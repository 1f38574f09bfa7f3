"""The README's and the docs pages' transcripts are what the commands print.

Every ``$ optlab ...`` block of the README's tour (and any other, in the README or a page of
``docs/``, marked as checked here) runs, in order (the README, then the pages as PAGES lists
them), in a folder holding the quickstart study, and its output is compared line by line:
``...`` stands for any lines; whole numbers (counts, run ids) match exactly and decimals
within 0.02 or 5% (accuracies and losses vary in their last digits between CPUs),
and timings, worker and thread counts, a run's place in the finishing order and the losses
of a diverging run (chaotic across CPUs) are not compared. A transcript elsewhere in the
README says, in an HTML comment before it, where it is checked or that it is illustrative;
so does every Python block, and the tour's test runs those marked for the quickstart store.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import optlab

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The README, then the docs pages, in the order the tour's checks run through them.
PAGES = [README] + [
    ROOT / "docs" / f"{name}.md"
    for name in ("answers", "studies", "running", "beyond", "store", "plugins", "house")
]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")
LOOSE = [
    (re.compile(r"\d+m\d\ds"), "<time>"),
    (re.compile(r"\d+ (worker|thread)\(s\)"), r"<n> \1(s)"),
    (re.compile(r"^\[\d+/"), "[<k>/"),
    # A diverging run's losses grow chaotically: on another CPU the same run passes the
    # rule with another loss, or an epoch sooner or later. Which runs diverge is compared.
    (
        re.compile(r"training loss \S+ is above (\d+) x the first epoch's \(\S+\) in epoch \d+"),
        r"training loss <x> is above \1 x the first epoch's (<y>) in epoch <n>",
    ),
]


def transcripts() -> list[tuple[str, str | None, list[tuple[str, list[str]]]]]:
    """(section, the comment before the block, [(command, expected lines)])."""
    out: list = []
    for page in PAGES:
        out += _transcripts(page)
    return out


def _transcripts(page: Path) -> list[tuple[str, str | None, list[tuple[str, list[str]]]]]:
    out, section, comment = [], "", None
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:]
        if line.startswith("```") and i + 1 < len(lines) and lines[i + 1].startswith("$ "):
            end = lines.index("```", i + 1)
            block, runs = lines[i + 1 : end], []
            for text in block:
                if text.startswith("$ "):
                    runs.append([text[2:], []])
                elif text.startswith("    ") and not runs[-1][1]:
                    runs[-1][0] += "\n" + text
                else:
                    runs[-1][1].append(text)
            out.append((section, comment, [(c, e) for c, e in runs]))
            i = end
        comment = line if line.startswith("<!--") else (comment if not line.strip() else None)
        i += 1
    return out


def python_blocks() -> list[tuple[str | None, str]]:
    """(the comment before it, the code) of every ```python block of the README."""
    found = [
        hit
        for page in PAGES
        for hit in re.findall(r"(?:(<!--[^\n]*-->)\n)?```python\n(.*?)```", page.read_text(), re.S)
    ]
    return [(comment or None, code) for comment, code in found]


def test_every_python_block_says_where_it_runs():
    blocks = python_blocks()
    assert len(blocks) >= 3
    for comment, code in blocks:
        assert comment is not None and "python:" in comment, f"no comment before:\n{code}"
        assert "tests/" in comment, f"{comment}: name the test that runs it"


def loose(line: str) -> str:
    for pattern, repl in LOOSE:
        line = pattern.sub(repl, line)
    return line


def same_line(expected: str, actual: str) -> bool:
    expected, actual = loose(expected), loose(actual)
    if NUMBER.sub("#", expected) != NUMBER.sub("#", actual):
        return False
    for a, b in zip(NUMBER.findall(expected), NUMBER.findall(actual), strict=True):
        if a.lstrip("-").isdigit() and b.lstrip("-").isdigit():
            if a != b:
                return False
        elif abs(float(a) - float(b)) > max(0.02, 0.05 * abs(float(a))):
            return False
    return True


def test_the_comparison_is_strict_where_it_should_be():
    assert same_line(
        "finished in 0m20s: 3 diverged, 53 done", "finished in 1m02s: 3 diverged, 53 done"
    )
    assert not same_line("3 diverged, 53 done", "3 diverged, 54 done")
    assert not same_line("done 5ef2804fde9a lr=0.003", "done 5ef2804fde9b lr=0.003")
    assert same_line("best test_acc 0.8911", "best test_acc 0.8933")
    assert not same_line("best test_acc 0.8911", "best test_acc 0.7911")
    assert same_line("[2/56] done", "[17/56] done") and not same_line("[2/56]", "[2/57]")
    diverged = "d a9448d685ebe: training loss {} is above 100 x the first epoch's ({}) in epoch {}"
    assert same_line(diverged.format("4.994e+04", 2.479, 3), diverged.format("2.712e+05", 2.5, 4))
    assert not same_line(
        diverged.format(1, 2, 3), diverged.format(1, 2, 3).replace("a9448d685ebe", "a9448d685ebf")
    )
    assert matches(["a", "...", "c"], ["a", "b", "b", "c"]) and not matches(
        ["a", "c"], ["a", "b", "c"]
    )
    table = ["lr acc", "0.03 0.99", " 0.1 0.99", " 0.1 0.9867", "(3 rows)"]
    swapped = ["lr acc", "0.03 0.99", " 0.1 0.9889", " 0.1   0.99", "(3 rows)"]
    assert matches(table, swapped)
    assert not matches(table, ["lr acc", "0.03 0.99", " 0.1 0.99", " 0.3 0.99", "(3 rows)"])
    assert not matches(table, ["lr acc", "0.03 0.99", " 0.1 0.7", " 0.1 0.99", "(3 rows)"])


def matches(expected: list[str], actual: list[str]) -> bool:
    """Each expected line in order; ``...`` skips any number of actual lines. The rows of a
    table (lines of one shape) may come in another order: a query that ranks by a measured
    value orders rows whose values are within the tolerance as the CPU's last digits fall."""
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(matches(expected[1:], actual[k:]) for k in range(len(actual) + 1))
    if actual and same_line(expected[0], actual[0]) and matches(expected[1:], actual[1:]):
        return True
    k = _rows(expected)
    return k > 1 and _same_rows(expected[:k], actual[:k]) and matches(expected[k:], actual[k:])


def _shape(line: str) -> str:
    return " ".join(NUMBER.sub("#", loose(line)).split())


def _rows(lines: list[str]) -> int:
    """How many leading lines are rows of one table (the same words, other numbers)."""
    k = 1
    while k < len(lines) and NUMBER.search(lines[0]) and _shape(lines[k]) == _shape(lines[0]):
        k += 1
    return k


def _same_rows(expected: list[str], actual: list[str]) -> bool:
    """The same rows in any order, each within the tolerance (column widths aside)."""
    left = [" ".join(a.split()) for a in actual]
    if len(left) != len(expected):
        return False
    for row in expected:
        hit = next((i for i, a in enumerate(left) if same_line(" ".join(row.split()), a)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


def test_every_transcript_outside_the_tour_says_where_it_is_checked():
    for section, comment, runs in transcripts():
        if section != "A tour":
            assert comment is not None, f"{section}: {runs[0][0]!r} needs a comment"


@pytest.mark.slow  # real worker processes
def test_the_tour_prints_what_the_readme_says(tmp_path):
    (tmp_path / "studies").mkdir()
    shutil.copy(ROOT / "studies" / "quickstart.toml", tmp_path / "studies")
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("OPTLAB_STORE", None)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "optlab").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m optlab "$@"\n')
    (bin_dir / "optlab").chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    tour = [
        runs
        for section, comment, runs in transcripts()
        if section == "A tour" or "tests/test_readme.py" in (comment or "")
    ]
    assert len(tour) >= 6
    for runs in tour:
        for command, expected in runs:
            proc = subprocess.run(
                ["bash", "-c", command.replace("\n    ", " ")],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            actual = (proc.stdout + proc.stderr).rstrip("\n").splitlines()
            assert matches(expected, actual), (
                f"$ {command}\n--- README:\n"
                + "\n".join(expected)
                + "\n--- printed:\n"
                + "\n".join(actual)
            )
    # The README's Python, run as written on the store the tour made.
    for comment, code in python_blocks():
        if "tests/test_readme.py" in comment and "on the quickstart store" in comment:
            (tmp_path / "block.py").write_text(code)
            proc = subprocess.run(
                [sys.executable, "block.py"], cwd=tmp_path, capture_output=True, text=True
            )
            assert proc.returncode == 0, f"{code}\n--- raised:\n{proc.stderr}"
    assert (tmp_path / "heatmap.svg").is_file()
    # The README's picture of the page, on the study the tour ran (when a browser is here).
    from tests.test_serve import readme_picture

    picture = readme_picture(tmp_path)
    assert picture is None or picture.stat().st_size > 0


@pytest.mark.slow  # real worker processes
def test_the_write_a_plugin_section_works_as_written(tmp_path):
    """The section's two files, saved as it says, run as a study."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    files = dict(re.findall(r"<!-- write-a-plugin: (\S+)[^>]*-->\n```\w+\n(.*?)```", text, re.S))
    assert set(files) == {"my_optimizers.py", "study.toml"}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    show = optlab("show", "study.toml", cwd=tmp_path, check=True).stdout
    assert "6 runs, 0 done" in show
    proc = optlab("run", "study.toml", cwd=tmp_path, check=True)
    assert proc.stdout.splitlines()[-1].endswith(": 6 done")
    got = optlab(
        "query", "select distinct optimizer from runs", "--format", "csv", cwd=tmp_path
    ).stdout
    assert got == "optimizer\nsignsgd\n"


def test_every_path_in_every_page_exists():
    """A path of the repository named in the README or a docs page (src/, tests/, studies/,
    benchmarks/, plugins/, docs/) is there: a move that forgets a page fails here."""
    named = {
        (page.name, path)
        for page in PAGES
        for path in re.findall(
            r"(?<![\w/.])((?:src|tests|studies|benchmarks|plugins|docs)/[\w./-]*[\w/])",
            page.read_text(),
        )
    }
    assert len(named) > 40
    missing = sorted((page, path) for page, path in named if not (ROOT / path).exists())
    assert not missing, f"named but not there: {missing}"


def test_the_readme_is_a_front_page_and_the_docs_build_as_a_site():
    """The README stays a front page (the two commands, a tour, where to read on); every
    docs page is in the site's navigation (mkdocs.yml), and every page the README points
    to exists."""
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, len(lines)
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES[1:]:
        assert f" {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"
    for target in re.findall(r"\]\((docs/[\w.-]+\.md)\)", README.read_text()):
        assert (ROOT / target).is_file(), target


def test_the_site_s_home_gives_the_readme_s_two_commands():
    def commands(text: str) -> str:
        return text.split("```bash", 1)[1].split("```", 1)[0]

    assert commands((ROOT / "docs" / "index.md").read_text()) == commands(README.read_text())
