"""A regular (not editable) `pip install .` works outside the repository: every module under
`alignment/` imports from the installed copy, the shipped assets come along, and a one-stage SFT
config builds from the installed schema (`alignment.engine.config`) and validates.

The virtual environment sees this interpreter's site-packages (the dependencies) through a `.pth`
line, so nothing is downloaded: `pip install --no-deps --no-build-isolation` of a copy of the
package source into a fresh environment, then a check script run from an empty directory.
"""

import json
import os
import pathlib
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent("""
    import importlib, json, os, pkgutil, sys
    import alignment
    from alignment import learners
    from alignment.engine.config import base_config, parse_arg

    root = os.path.dirname(alignment.__file__)
    modules, failed = [], {}
    for info in pkgutil.walk_packages(alignment.__path__, "alignment."):
        try:
            module = importlib.import_module(info.name)
        except Exception as e:  # reported with the module's name
            failed[info.name] = f"{type(e).__name__}: {e}"
            continue
        modules.append(info.name)
        assert os.path.abspath(module.__file__).startswith(root), (info.name, module.__file__)
    config = base_config("sft", parse_arg("tiny", {"tiny": False, "loss": "sft"}))
    config.lock()
    learners.validate(config)
    base = os.path.join(root, "assets", "bases", "sentiment")
    print(json.dumps({"root": root, "prefix": sys.prefix, "modules": modules, "failed": failed,
                      "kind": config.kind, "assets": sorted(os.listdir(base)) if os.path.isdir(base) else []}))
""")


def _copy_source(dst: pathlib.Path) -> pathlib.Path:
    """setup.py and alignment/ (no caches): the build writes build/ and *.egg-info next to them."""
    dst.mkdir()
    shutil.copy2(REPO / "setup.py", dst / "setup.py")
    shutil.copytree(
        REPO / "alignment", dst / "alignment", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return dst


def test_plain_pip_install_imports_every_module_from_outside_the_repo(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    purelib = pathlib.Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
    )
    # the running interpreter's packages (jax, flax, pip, setuptools, ...) as plain path entries:
    # no .pth file of theirs runs, so an editable install of this repository there stays invisible
    host = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (purelib / "_host_packages.pth").write_text("\n".join(dict.fromkeys(host)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        PYTHONNOUSERSITE="1",
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        JAX_PLATFORMS="cpu",
        SETUPTOOLS_USE_DISTUTILS="local",
    )
    src = _copy_source(tmp_path / "src")
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            ".",
        ],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    installed = purelib / "alignment"
    assert (installed / "engine" / "config.py").is_file() and not (
        purelib / "__editable__.alignment-0.1.0.pth"
    ).exists()

    elsewhere = tmp_path / "elsewhere"  # neither the repository nor the source copy
    elsewhere.mkdir()
    proc = subprocess.run(
        [str(python), "-c", CHECK],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert pathlib.Path(out["root"]) == installed, out["root"]
    assert pathlib.Path(out["prefix"]) == venv
    assert not out["failed"], out["failed"]
    want = sorted(
        str(p.relative_to(REPO).with_suffix("")).replace(os.sep, ".")
        for p in (REPO / "alignment").rglob("*.py")
        if p.name != "__init__.py"
    )
    missing = sorted(set(want) - set(out["modules"]))
    assert not missing, f"modules of alignment/ not installed: {missing}"
    assert {
        "alignment.engine",
        "alignment.engine.config",
        "alignment.learners.online_config",
    } <= set(out["modules"])
    assert out["kind"] == "sft"
    assert "config.json" in out["assets"] and any(
        a.endswith(".safetensors") for a in out["assets"]
    ), out["assets"]
