"""``gateway demo`` as a newcomer runs it: every scenario passes, the agents part and a call record shown."""
from __future__ import annotations

import subprocess

from cli_helpers import clean_env, gateway_command


def test_the_demo_passes_every_scenario():
    proc = subprocess.run([*gateway_command(), "demo"], env=clean_env(), capture_output=True, text=True,
                          timeout=240, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "9/9 scenarios correct" in out
    for name in ("tool call, slow answer, spoken filler", "keypad digits forwarded", "end_call after the goodbye",
                 "transfer_call: refused, then allowed"):
        assert f"PASS  {name}" in out
    assert '"tool_calls": [' in out and '"transcript": [' in out  # the printed call record
    assert proc.stderr == ""  # nothing leaks besides the report
