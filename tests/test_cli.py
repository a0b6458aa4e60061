"""The command line, the self-check's coverage of every layer, and read-only installs."""

import inspect
import os
import shutil
import stat
import subprocess
import sys

import pytest

import scratchlm
from scratchlm import nn
from scratchlm.cli import main
from scratchlm.selfcheck import CASES, run_case


def test_gradcheck_command_passes_and_prints_table(capsys):
    assert main(["gradcheck", "--quiet", "--only", "Linear", "CrossEntropyLoss", "GloVe"]) == 0
    out = capsys.readouterr().out
    assert "max rel err" in out and "Linear" in out and "CrossEntropyLoss" in out
    assert "passed, 0 failed" in out


@pytest.mark.slow      # every case on the Numba route: minutes on a cold cache (each case's NumPy
def test_gradcheck_command_passes_every_case(capsys):     # route runs by default, below)
    assert main(["gradcheck", "--quiet"]) == 0
    assert f"{len(CASES)} passed, 0 failed" in capsys.readouterr().out


def test_gradcheck_command_numpy_route_and_selection(capsys):
    assert main(["gradcheck", "--quiet", "--backend", "numpy", "--only", "LayerNorm", "GELU"]) == 0
    assert "2 passed, 0 failed (backend numpy" in capsys.readouterr().out
    assert main(["gradcheck", "--only", "Nope"]) == 2


def test_gradcheck_command_fails_on_a_broken_layer(monkeypatch, capsys):
    import scratchlm.functional.activation as act
    good = act.tanh_backward
    monkeypatch.setattr(nn.Tanh, "_backward", staticmethod(lambda dy, y: good(dy, y) * 1.01))
    assert main(["gradcheck", "--quiet", "--only", "Tanh"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_every_public_layer_has_a_selfcheck_case():
    from scratchlm.selfcheck import build_case
    covered = set()
    for name in CASES:
        module, _ = build_case(name)
        covered.update(type(m) for m in module.modules())
    public = {getattr(nn, n) for n in nn.__all__}
    layers = {c for c in public if inspect.isclass(c) and issubclass(c, nn.Module)
              and c.forward is not nn.Module.forward}          # containers have no forward
    missing = sorted(c.__name__ for c in layers - covered)
    assert not missing, f"no gradcheck case for: {missing}"


def test_every_registered_model_has_a_selfcheck_case():
    from scratchlm.selfcheck import uncovered_models
    assert uncovered_models() == []


@pytest.mark.parametrize("name", list(CASES))
def test_selfcheck_case_numpy_route(name):
    with scratchlm.use_backend("numpy"):
        assert run_case(name, seed=1).ok


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "scratchlm", "gradcheck", "--quiet", "--only", "Linear"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "1 passed, 0 failed" in out.stdout
    help_out = subprocess.run([sys.executable, "-m", "scratchlm", "--help"], capture_output=True, text=True)
    assert "gradcheck" in help_out.stdout


def _read_only_runner(site):
    """A command prefix under which ``site`` is genuinely read-only, or None.

    As an ordinary user, file permissions suffice. Root ignores permissions, so there the site
    folder is bind-mounted read-only inside a private mount namespace (``unshare -m``), which
    vanishes with the process.
    """
    if os.geteuid() != 0:
        for root, dirs, files in os.walk(site):
            for f in files:
                os.chmod(os.path.join(root, f), stat.S_IRUSR)
            os.chmod(root, stat.S_IRUSR | stat.S_IXUSR)
        return []
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {site} {site} && "
                            f"mount -o remount,bind,ro {site} && ! touch {site}/probe 2>/dev/null"],
                           capture_output=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "sh", "-c",
            f'mount --bind {site} {site} && mount -o remount,bind,ro {site} && exec "$0" "$@"']


def test_works_from_a_read_only_install(tmp_path):
    """Numba's cache=True must fall back to the user's cache folder when the installed package
    folder is not writable (a system-wide site-packages)."""
    site = tmp_path / "site"
    shutil.copytree(os.path.dirname(scratchlm.__file__), site / "scratchlm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    prefix = _read_only_runner(str(site))
    if prefix is None:
        pytest.skip("cannot make a read-only folder here (root without mount namespaces)")
    code = ("import os, numpy as np, scratchlm; from scratchlm import nn\n"
            "assert scratchlm.__file__.startswith(%r), scratchlm.__file__\n"
            "try:\n    open(os.path.join(os.path.dirname(scratchlm.__file__), 'w'), 'w')\n"
            "except OSError:\n    pass\nelse:\n    raise SystemExit('site is writable')\n"
            "m = nn.Sequential(nn.Linear(4, 4), nn.GELU('tanh'), nn.LayerNorm(4))\n"
            "y = m(np.ones((2, 4), np.float32)); m.backward(np.ones_like(y)); print('ok')\n") % str(site)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(PYTHONPATH=str(site), HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "home" / ".cache"))
    try:
        out = subprocess.run(prefix + [sys.executable, "-c", code], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
    finally:
        for root, dirs, files in os.walk(site):
            os.chmod(root, stat.S_IRWXU)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "ok"
    assert not any(d == "__pycache__" for _, dirs, _ in os.walk(site) for d in dirs)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_selfcheck_many_seeds(backend):
    """Soak: every case, 10 seeds, both routes (run with `pytest -m slow`)."""
    with scratchlm.use_backend(backend):
        for name in CASES:
            for seed in range(10):
                report = run_case(name, seed=seed)
                assert report.ok, str(report)


def test_console_script():
    exe = shutil.which("scratchlm")
    if exe is None:
        pytest.skip("the package is not pip-installed here (no console script on PATH)")
    out = subprocess.run([exe, "gradcheck", "--quiet", "--only", "ReLU"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "1 passed, 0 failed" in out.stdout
