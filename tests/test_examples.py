"""The README's runnable example keeps working (it asserts losslessness itself)."""

import pathlib
import runpy


def test_quickstart_example_runs(capsys):
    runpy.run_path(str(pathlib.Path(__file__).parents[1] / "examples" / "quickstart.py"), run_name="__main__")
    assert "identical to target-only output: True" in capsys.readouterr().out
