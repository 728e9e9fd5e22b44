import shutil
import subprocess

import pytest

from jaxplastic._cli import main


def test_demo_runs_and_reports(capsys):
    assert main(["demo", "--n-input", "1000", "--n-hidden", "100", "--steps", "300"]) == 0
    out = capsys.readouterr().out
    assert "hidden rate" in out and "synapses in" in out and "steps/s" in out
    rate = float(out.split("hidden rate")[1].split(":")[1].split("Hz")[0])
    assert 0.0 < rate < 500.0


@pytest.mark.parametrize("argv", [["demo", "--steps", "0"], ["demo", "--n-hidden", "x"], ["nope"]])
def test_bad_arguments_exit_nonzero(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code != 0
    assert "error" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("jaxplastic") is None, reason="console script not installed")
def test_console_script_help():
    result = subprocess.run(["jaxplastic", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "demo" in result.stdout
