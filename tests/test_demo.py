"""`s3pull demo` as a newcomer meets it."""

from __future__ import annotations

import subprocess
import sys

from conftest import AGENT_ENV

# `python -c` with a meta-path finder in front that refuses moto, as an interpreter
# without the demo extra would: the rest of s3pull imports as installed.
WITHOUT_MOTO = """\
import runpy, sys

class NoMoto:
    def find_spec(self, name, path=None, target=None):
        if name == "moto" or name.startswith("moto."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoMoto())
sys.argv[0] = "s3pull"
runpy.run_module("s3pull", run_name="__main__")
"""


def test_demo_without_moto_says_how_to_install_it() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_MOTO, "demo"],
        capture_output=True,
        text=True,
        env=AGENT_ENV,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "No module named 'moto'" in result.stderr
    assert "pip install 's3pull[demo]'" in result.stderr
    assert "make demo" in result.stderr
