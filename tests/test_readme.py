"""The README stays true: its Python examples run (and print what it says they print), and its
two opening commands are the ones CI and users run."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(README.read_text())]


def python_examples() -> list[tuple[str, str | None]]:
    """Each python block with the `output` block that follows it directly, if any."""
    found = blocks()
    examples = []
    for i, (lang, code) in enumerate(found):
        if lang != "python":
            continue
        after = found[i + 1] if i + 1 < len(found) else None
        examples.append((code, after[1] if after and after[0] == "output" else None))
    return examples


def test_readme_has_python_examples() -> None:
    assert len(python_examples()) >= 2


@pytest.mark.parametrize("index", range(len(python_examples())))
def test_python_example_runs(index: int, tmp_path: Path) -> None:
    code, expected = python_examples()[index]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"README example {index} failed:\n{done.stderr}"
    if expected is not None:
        assert done.stdout == expected


def cli_commands() -> set[str]:
    from chatstate.cli import COMMANDS, build_parser

    build_parser()  # imports the modules that register the subcommands
    return set(COMMANDS)


def test_opening_commands() -> None:
    shell = [code.strip() for lang, code in blocks() if lang == "sh"]
    run_main, run_tests = shell[0], shell[1]
    # It installs everything and starts a real `chatstate` subcommand (the main job).
    assert "pip install -e '.[all]'" in run_main
    main_job = run_main.rsplit("&&", 1)[1].split()
    assert main_job[0] == ".venv/bin/chatstate" and main_job[1] in cli_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r'^TEST_COMMAND="(.*)"$', ci, re.M)
    assert match, ".ci/run must define TEST_COMMAND"
    assert match.group(1) == run_tests, "README's test command and .ci/run's must be the same"
    # Both are valid shell words (quotes balanced).
    shlex.split(run_main)
    shlex.split(run_tests)
