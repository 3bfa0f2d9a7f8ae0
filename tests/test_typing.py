"""The public API is typed for a user's type checker (py.typed ships with the
package): mypy --strict accepts a user's program, and every value it reveals
has its precise type, not Any (tests/typing_user_program.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = ROOT / "tests" / "typing_user_program.py"

pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")


def test_py_typed_ships_with_the_package():
    assert (ROOT / "shmlog" / "py.typed").exists()


def test_mypy_strict_accepts_a_user_program_and_sees_precise_types(tmp_path):
    # --follow-imports=silent: type-check the user's code against shmlog's
    # annotations, as a user's mypy does with an installed package
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                        "--no-incremental", "--cache-dir", str(tmp_path), str(PROGRAM)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    revealed = {}
    for line in r.stdout.splitlines():
        m = re.match(r".*typing_user_program\.py:(\d+): note: Revealed type is \"(.*)\"$", line)
        if m:
            revealed[int(m.group(1))] = m.group(2)
    expected = {}
    for n, line in enumerate(PROGRAM.read_text().splitlines(), 1):
        if "reveal_type(" in line and "# E: " in line:
            expected[n] = line.split("# E: ", 1)[1].strip()
    errors = [line for line in r.stdout.splitlines() if ": error:" in line]
    assert not errors, "mypy --strict rejects a user's program:\n" + "\n".join(errors)
    assert expected and revealed == expected, (r.stdout, r.stderr)
