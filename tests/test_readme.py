"""Every command in the README runs as written.

Each ```bash block of README.md is split into commands (a trailing backslash continues a line, a
``  #`` starts a comment) and each ``fedmm`` command runs in this process, in the README's order, as
written except: a run is shorter (``num-server-rounds=2``, ``local-epochs=1``; one round and
one seed for ``fedmm bench``, two trials for ``fedmm tune``) and on the inline engine, and every
path under ``results/`` or ``experiments/out/`` is moved into a temporary directory. A block
whose fence is preceded by the line ``<!-- readme-test: skip (reason) -->`` is not run here; the
reason names the tests that cover it (``make demo``/``make test``, ``--resume``, ``flwr run``).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SKIP = re.compile(r"^<!-- readme-test: skip \((.+)\) -->$")
#: Shorter runs (later --set wins over the README's own), on the inline engine.
SHORTER = ("--set", "num-server-rounds=2", "--set", "local-epochs=1", "--set", "engine=inline")
OUTPUT_PREFIXES = ("results/", "experiments/out/")


@dataclass(frozen=True)
class Command:
    """One command of a ```bash block: its text, and why it is not run here (``None``: it runs)."""

    text: str
    skip: str | None = None


def readme_commands(text: str) -> list[Command]:
    """The commands of every ```bash block of ``text``, in order (see the module docstring)."""
    commands: list[Command] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```bash":
            i += 1
            continue
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        skip = m.group(1) if (m := SKIP.match(before)) else None
        i += 1
        pending = ""
        while i < len(lines) and lines[i].strip() != "```":
            line = lines[i].split("  #")[0].rstrip() if not lines[i].lstrip().startswith("#") else ""
            pending += line.strip()
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip() + " "
            elif pending:
                commands.append(Command(pending, skip))
                pending = ""
            i += 1
        i += 1
    return commands


COMMANDS = readme_commands(README.read_text())


def argv_of(command: str, tmp: Path) -> list[str]:
    """The ``fedmm`` arguments of ``command`` as this test runs it (shorter, inline, outputs in ``tmp``)."""
    words = shlex.split(command)
    assert words[0] in (".venv/bin/fedmm", "fedmm"), f"the README test runs fedmm commands only: {command}"
    args = [str(tmp / w) if w.startswith(OUTPUT_PREFIXES) else w for w in words[1:]]
    if args[0] == "simulate" and "--resume" not in args:
        args += SHORTER
    elif args[:1] == ["bench"]:
        args += [*SHORTER, "--set", "num-server-rounds=1", "--seeds", "0"]  # a grid: one round, one seed
    elif args[:1] == ["tune"]:
        args += [*SHORTER, "--trials", "2"]  # a study: two short trials
    return args


def test_the_readme_has_commands_and_a_skip_marker_names_its_reason() -> None:
    assert sum(c.skip is None for c in COMMANDS) >= 8
    skipped = {c.text.split()[0] for c in COMMANDS if c.skip}
    assert skipped == {"make", ".venv/bin/fedmm", "export", "flwr"}, skipped
    assert all("test" in c.skip for c in COMMANDS if c.skip)  # each names the tests that cover it
    assert readme_commands(
        "x\n<!-- readme-test: skip (covered by tests/a.py) -->\n```bash\na \\\n  b  # c\n"
        "# note\nd\n```\n```bash\ne\n```\n"
    ) == [Command("a b", "covered by tests/a.py"), Command("d", "covered by tests/a.py"), Command("e")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One directory for every command's outputs, so that `fedmm report results/demo` finds the run."""
    return tmp_path_factory.mktemp("readme")


def _produce_missing_inputs(argv: list[str], workdir: Path, main) -> None:
    """Run the README command that writes a results directory ``argv`` reads (``fedmm report
    results/demo``) when it is not there yet: under pytest-xdist the commands may run on two
    workers, each with its own ``workdir``."""
    if argv[0] not in ("report", "compare"):
        return
    writers = {}
    for c in COMMANDS:
        if c.skip is None:
            other = argv_of(c.text, workdir)
            if other[0] == "simulate" and "--out" in other:
                writers[other[other.index("--out") + 1]] = other
    for arg in argv[1:]:
        if arg in writers and not (Path(arg) / "summary.json").is_file():
            assert main(writers[arg]) == 0, writers[arg]


@pytest.mark.integration
@pytest.mark.parametrize(
    "command", [c.text for c in COMMANDS if c.skip is None], ids=lambda text: text.removeprefix(".venv/bin/")[:70]
)
def test_every_readme_command_runs_as_written(command: str, workdir: Path, monkeypatch, capsys) -> None:
    from fedmm.cli import _parser, main

    argv = argv_of(command, workdir)
    subcommands = _parser()._subparsers._group_actions[0].choices
    if argv[0] not in subcommands:  # a command of a branch not merged into this one yet
        pytest.skip(f"`fedmm {argv[0]}` is not in this build")
    monkeypatch.chdir(REPO)  # the README's relative paths (experiments/configs/...) are the repository's
    _produce_missing_inputs(argv, workdir, main)  # another worker may have run the command that writes them
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, f"{command}\n{captured.out[-2000:]}\n{captured.err[-2000:]}"
    if argv[0] == "simulate":
        out = Path(argv[argv.index("--out") + 1])
        assert json.loads((out / "summary.json").read_text())["status"] == "completed"
        rounds = [line for line in captured.out.splitlines() if line.startswith("round ")]
        assert len(rounds) == 3, captured.out  # rounds 0-2, one line each (stdout is not a terminal)


def test_the_first_minute_output_shown_is_what_the_command_prints() -> None:
    """The README shows the first-minute command's real output: its lines have today's format and
    one line per round of the command's own num-server-rounds."""
    from fedmm.progress import round_line

    text = README.read_text()
    section = text.split("## Your first minute", 1)[1].split("\n## ", 1)[0]
    command = next(c.text for c in readme_commands(section))
    rounds = int(re.search(r"num-server-rounds=(\d+)", command).group(1))
    shown = section.split("```text\n", 1)[1].split("```", 1)[0].splitlines()
    lines = [line for line in shown if line.startswith("round ")]
    assert [int(re.match(r"round +(\d+)/", line).group(1)) for line in lines] == list(range(rounds + 1))
    for line in lines:  # the same fields, in the same format, as round_line prints
        n, acc, val, weak, weak_acc, loss, seconds = re.match(
            r"round +(\d+)/\d+  test/acc (\S+)  val/acc (\S+)  weak (\S+) (\S+)  loss (\S+)  (\S+) s$", line
        ).groups()
        row = {
            "round": int(n),
            "test/acc": float(acc),
            "val/acc": float(val),
            f"test/acc/{weak}": float(weak_acc),
            "train/loss": float("nan") if loss == "-" else float(loss),
            "seconds": float(seconds),
        }
        assert round_line(row, rounds) == line
    assert shown[0].startswith("partition: segment has no natural clients")
    assert shown[-2].startswith(f"test/acc {lines[-1].split()[3]} (at best val round ")
