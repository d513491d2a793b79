"""The audio layer sits below data, models, training and the tools: importing it must not load them.

Checked in a fresh interpreter, since this test process has imported everything already.
"""

import subprocess
import sys

import pytest

UPPER = ("voxfast.data", "voxfast.models", "voxfast.train", "voxfast.eval", "voxfast.tasks", "voxfast.bench",
         "voxfast.api", "voxfast.cli")


@pytest.mark.parametrize("module", ["voxfast.audio.io", "voxfast.audio.wav", "voxfast.audio.store",
                                    "voxfast.audio.augment", "voxfast.audio.features"])
def test_an_audio_module_imports_no_higher_layer(module):
    code = (f"import sys, {module}\n"
            f"print(sorted(m for m in sys.modules if m.startswith({UPPER!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{module} loads {out.strip()}"
