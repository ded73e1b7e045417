"""Command-line behaviour of the bench and install scripts: user errors end in one clear line
(no traceback), and the scripts run from any folder without the package installed."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
TIMEOUT = 180
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")


def run(cmd: list[str], cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, env={**base, "OMP_NUM_THREADS": "1", **env}, capture_output=True,
                          text=True, timeout=TIMEOUT)


def assert_one_line_error(proc: subprocess.CompletedProcess, message: str, code: int = 1) -> None:
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]


@no_cuda
@pytest.mark.parametrize("script", ["bench_worldmodel.py", "bench_vid2world.py", "bench_memory.py"])
def test_gpu_benches_without_cuda_say_so_in_one_line(script):
    proc = run([sys.executable, str(SCRIPTS / script), "--device", "cuda"])
    assert_one_line_error(proc, "error: --device cuda asked for CUDA, but torch sees no GPU")
    assert "use --device auto or --device cpu" in proc.stderr


def test_a_device_name_that_is_no_device_is_refused():
    proc = run([sys.executable, str(SCRIPTS / "bench_vid2world.py"), "--device", "gpu0"])
    assert_one_line_error(proc, "error: --device gpu0 is not a device; use auto, cpu, cuda or cuda:N")


@no_cuda
def test_bench_mbpo_refuses_the_reference_preset_without_cuda(capsys):
    proc = run([sys.executable, str(SCRIPTS / "bench_mbpo.py"), "--preset", "reference"])
    assert_one_line_error(proc, "--preset reference runs the full-size world model")
    assert "--allow-cpu" in proc.stderr
    spec = importlib.util.spec_from_file_location("bench_mbpo", SCRIPTS / "bench_mbpo.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.check_preset_device("reference", allow_cpu=True)  # runs, with a warning
    assert "warning: --preset reference on the CPU" in capsys.readouterr().err
    bench.check_preset_device("cpu", allow_cpu=False)


@pytest.mark.parametrize("script, args, message", [
    ("bench_worldmodel.py", ["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
    ("bench_worldmodel.py", ["--transformer", "huge"], "argument --transformer: invalid choice: 'huge'"),
    ("bench_vid2world.py", ["--steps", "4", "0"], "argument --steps: must be at least 1, got 0"),
    ("bench_pretrain.py", ["--warmup", "0"], "argument --warmup: must be at least 1, got 0"),
    ("bench_envs.py", ["--steps", "-3"], "argument --steps: must be at least 1, got -3"),
])
def test_bench_arguments_out_of_range_are_refused_by_argparse(script, args, message):
    """A count of 0 (or a negative one) or an unknown size is refused before any work, in argparse's
    usage and one error line: not a traceback from deep inside (a median of no repeats, a division by
    zero steps, a Hydra setting the user never gave)."""
    proc = run([sys.executable, str(SCRIPTS / script), *args])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert message in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]


def test_bench_agent_refuses_a_device_name_that_is_no_device():
    proc = run([sys.executable, str(SCRIPTS / "bench_agent.py"), "--device", "foo"])
    assert_one_line_error(proc, "error: --device foo is not a device; use auto, cpu, cuda or cuda:N")


def test_bench_envs_runs_from_another_folder(tmp_path):
    """Without the package installed: the script finds mbrl beside itself."""
    proc = run([sys.executable, str(SCRIPTS / "bench_envs.py"), "--help"], cwd=tmp_path)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("args", [[], ["bogus"]])
def test_install_sims_checks_its_arguments_before_creating_a_venv(tmp_path, args):
    """A copy in a checkout without .venv: bad arguments print the usage and create nothing."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPTS / "install_sims.sh", tmp_path / "scripts")
    proc = run(["bash", str(tmp_path / "scripts" / "install_sims.sh"), *args], cwd=tmp_path)
    assert proc.returncode == 2 and "usage: bash scripts/install_sims.sh" in proc.stderr, proc.stderr
    assert not (tmp_path / ".venv").exists() and not (tmp_path / ".sims").exists()


def setup_copy(tmp_path: Path) -> Path:
    """scripts/setup.sh and constraints.txt in an empty checkout (no .venv): nothing to install into."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPTS / "setup.sh", tmp_path / "scripts")
    shutil.copy(REPO / "constraints.txt", tmp_path)
    return tmp_path / "scripts" / "setup.sh"


def fake_python(path: Path, version: str = "3.12.1") -> Path:
    """An executable that answers like another Python: --version, a working `-m pip`, and `-c` fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\ncase "$1" in --version) echo "Python {version}";; -m) exit 0;; *) exit 1;; esac\n')
    path.chmod(0o755)
    return path


def test_setup_help_prints_the_usage_and_creates_nothing(tmp_path):
    proc = run(["bash", str(setup_copy(tmp_path)), "--help"], cwd=tmp_path)
    assert proc.returncode == 0 and "usage: bash scripts/setup.sh" in proc.stdout, proc.stderr
    assert not (tmp_path / ".venv").exists()


@pytest.mark.parametrize("args", [["metaword"], ["all", "--tset"]])
def test_setup_refuses_an_unknown_argument_before_installing(tmp_path, args):
    proc = run(["bash", str(setup_copy(tmp_path)), *args], cwd=tmp_path)
    assert proc.returncode == 2 and f"unknown argument '{args[-1]}'" in proc.stderr, proc.stderr
    assert "usage: bash scripts/setup.sh" in proc.stderr
    assert not (tmp_path / ".venv").exists()


def test_setup_refuses_a_python_other_than_3_11(tmp_path):
    script = setup_copy(tmp_path)
    other = fake_python(tmp_path / "bin" / "python3.12")
    proc = run(["bash", str(script)], cwd=tmp_path, PYTHON=str(other))
    assert proc.returncode == 1 and "Python 3.12.1" in proc.stderr and "needs Python 3.11" in proc.stderr, proc.stderr
    assert "PYTHON=" in proc.stderr and not (tmp_path / ".venv").exists()


def test_setup_refuses_an_existing_venv_of_another_python(tmp_path):
    script = setup_copy(tmp_path)
    fake_python(tmp_path / ".venv" / "bin" / "python")
    (tmp_path / ".venv" / "bin" / "activate").write_text("")
    proc = run(["bash", str(script)], cwd=tmp_path)
    assert proc.returncode == 1 and ".venv was built with Python 3.12.1" in proc.stderr, proc.stderr
    assert "rm -rf .venv" in proc.stderr and (tmp_path / ".venv" / "bin" / "python").exists()


def test_pretrain_refuses_world_model_none_in_one_line(tmp_path):
    """world_model=none (model-free MBPO) is selectable, but there is nothing to pretrain: say so and
    name the choices, not a KeyError from the run's setup."""
    proc = run([sys.executable, str(SCRIPTS / "pretrain.py"), "world_model=none", "preset=cpu",
                "data=metaworld_demos", f"out={tmp_path / 'out'}"])
    assert_one_line_error(proc, "[pretrain] error: world_model=none: pretraining needs a world model; choose "
                                "world_model=ivideogpt or world_model=vid2world.")
