"""The installed command as a user runs it: a separate process with torch's default thread pool.

Regression: writer processes forked from a parent that had used a multi-threaded OpenMP pool hung on
their first torch op (the writers are threads now); the in-process tests run single-threaded and could
not see such a hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from gradcam.assets import sample_path


def test_explain_in_a_fresh_process_with_threads_and_writer_threads(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    command = [sys.executable, "-m", "gradcam", "explain", str(sample_path("coffee")), str(sample_path("cameraman")),
               "--out", str(tmp_path), "--writers", "2", "--workers", "0", "--quiet"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "2 explained, 0 already done, 0 failed" in done.stdout
    items = json.loads((tmp_path / "manifest.json").read_text())["items"]
    assert [item["predictions"][0]["index"] for item in items] == [872, 967]  # tripod, espresso
