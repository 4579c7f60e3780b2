"""powersam.utils.memory: the malloc setting the powersam command applies at start-up."""
import subprocess
import sys

import pytest

from powersam.utils import memory


def _run(code: str, **env: str) -> str:
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, **env}).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_takes_the_settings_and_the_environment_can_refuse_them():
    code = "from powersam.utils.memory import retain_freed_memory_unless_disabled as r; print(r())"
    assert _run(code, POWERSAM_MALLOC="") == "True"
    assert _run(code, POWERSAM_MALLOC="system") == "False"


@pytest.mark.parametrize("bad", [0, -1, 1 << 31, 1.5, True])
def test_thresholds_are_checked(bad):
    with pytest.raises(ValueError, match="threshold"):
        memory.retain_freed_memory(trim_threshold=bad)


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.retain_freed_memory() is False
