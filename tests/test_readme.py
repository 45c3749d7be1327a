"""The README's shell examples, run as written, in order, in one shell, against a live system.

A newcomer copies them one after the other into a terminal after `scripts/up`; so does this test,
against `clicktrail up` on free ports (the only change: the ports 8080 and 8081 in the URLs). Each
command must exit 0 (the examples use curl's --fail-with-body, so an HTTP error fails it), and
where the README shows an answer (`# => ...` lines under a command) the output must match it: JSON
as a subset (every field shown, with its value; "..." matches anything; lists whole), anything else
line by line with "..." as a wildcard. A command whose answer depends on background work (the sink,
the attributor) is retried for a while, as a reader would after a few seconds.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clicktrail import services
from tests.servers import env_for

ROOT = Path(__file__).resolve().parent.parent
EXPECT = "# => "
ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=")
HEREDOC = re.compile(r"<<-?\s*'?([A-Za-z_]+)'?")


@dataclass
class Example:
    command: str
    expected: list[str] = field(default_factory=list)
    line: int = 0


def shell_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of every ```sh block but the two commands that set up."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        if current is None and line.strip() == "```sh":
            current, start = [], number + 1
        elif current is not None and line.strip() == "```":
            if not any(part.startswith("scripts/") for part in current):
                blocks.append((start, current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def _complete(lines: list[str]) -> bool:
    """Whether these lines form whole commands: no open quote, no trailing backslash, no open heredoc."""
    text = "\n".join(lines)
    opened = next((n for n, line in enumerate(lines) if HEREDOC.search(line)), None)
    if opened is not None:
        return len(lines) > opened + 1 and lines[-1] == HEREDOC.search(lines[opened]).group(1)
    if text.endswith("\\"):
        return False
    return subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True).returncode == 0


def examples(text: str) -> list[Example]:
    found: list[Example] = []
    for start, lines in shell_blocks(text):
        pending: list[str] = []
        for offset, line in enumerate(lines):
            if not pending:
                if line.startswith(EXPECT):
                    assert found, f"README line {start + offset}: an answer with no command above it"
                    found[-1].expected.append(line[len(EXPECT):])
                    continue
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
            pending.append(line)
            if _complete(pending):
                found.append(Example("\n".join(pending), line=start + offset - len(pending) + 1))
                pending = []
        assert not pending, f"README line {start}: a command that never ends: {pending}"
    return found


def _matches(expected, actual) -> bool:
    if expected == "...":
        return True
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and _matches(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(map(_matches, expected, actual))
    return expected == actual


def answer_matches(expected: list[str], output: str) -> bool:
    if len(expected) == 1 and expected[0].startswith("{"):
        try:
            return _matches(json.loads(expected[0]), json.loads(output))
        except json.JSONDecodeError:
            return False
    got = output.strip().splitlines()
    patterns = [re.compile(".*".join(map(re.escape, line.split("..."))) + r"\Z") for line in expected]
    return len(got) == len(patterns) and all(p.match(line) for p, line in zip(patterns, got))


def test_the_readme_walk_through_runs_as_written(settings, r, ch, tmp_path):
    readme = (ROOT / "README.md").read_text()
    steps = examples(readme)
    assert len(steps) >= 15 and sum(1 for s in steps if s.expected) >= 10  # the walk-through is there
    port, api_port = services.free_port(), services.free_port()
    env = env_for(settings, DATA_DIR=str(tmp_path))
    up = subprocess.Popen([sys.executable, "-m", "clicktrail.cli", "up", "--no-services", "--bind",
                           f"127.0.0.1:{port}", "--api-bind", f"127.0.0.1:{api_port}"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in up.stdout:
            if line.startswith("Press Ctrl-C"):
                break
        shell_env = dict(env)
        for step in steps:
            command = step.command.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
            command = command.replace("127.0.0.1:8081", f"127.0.0.1:{api_port}")
            _run(step, command, shell_env)
    finally:
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=60)


def _run(step: Example, command: str, env: dict) -> None:
    assigned = ASSIGNMENT.match(command)
    script = command + (f'\nprintf %s "${assigned.group(1)}"' if assigned else "")
    deadline = time.monotonic() + (30 if step.expected else 0)
    while True:
        done = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
        ok = done.returncode == 0 and (not step.expected or answer_matches(step.expected, done.stdout))
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert done.returncode == 0, f"README line {step.line} failed ({done.returncode}):\n{command}\n" \
                                 f"{done.stdout}\n{done.stderr}"
    assert ok, f"README line {step.line} answered:\n{done.stdout}\nwhere the README shows:\n" + \
               "\n".join(step.expected)
    if assigned:
        env[assigned.group(1)] = done.stdout  # the next commands see it, as in one shell
        assert done.stdout, f"README line {step.line}: {assigned.group(1)} came out empty"


@pytest.mark.parametrize("output, ok", [
    ('{"a": 1, "b": [1, 2], "c": "x"}', True),
    ('{"a": 1, "b": [1], "c": "x"}', False),   # lists are whole
    ('{"a": 2, "b": [1, 2], "c": "x"}', False),
    ('{"b": [1, 2], "c": "x"}', False),         # a field shown must be there
    ("not json", False),
])
def test_a_json_answer_is_a_subset_with_wildcards(output, ok):
    assert answer_matches(['{"a": 1, "b": [1, "..."], "c": "..."}'], output) is ok


def test_a_text_answer_matches_line_by_line():
    assert answer_matches(["campaign_id,spend", "spring,..."], "campaign_id,spend\nspring,125.4\n")
    assert not answer_matches(["campaign_id,spend", "spring,..."], "campaign_id,spend\nsummer,1\n")
    assert not answer_matches(["C..."], "C1\nC2\n")


def test_commands_are_split_as_a_shell_reads_them():
    text = "\n".join(["```sh", "# prose", "A=$(echo 1)", "# => 1", "curl -sS x \\", "  -H 'a", "b'",
                      "cat <<EOF", "{\"x\": $A}", "EOF", "# => {\"x\": 1}", "```"])
    got = examples(text)
    assert [e.command for e in got] == ["A=$(echo 1)", "curl -sS x \\\n  -H 'a\nb'", "cat <<EOF\n{\"x\": $A}\nEOF"]
    assert [e.expected for e in got] == [["1"], [], ['{"x": 1}']]


