"""The wheel is complete: built from the repository and installed (not editable) into a fresh virtualenv, it
holds every file `routing-engine up` reads — Lua scripts, schemas, dashboard, configs, team map, default data.

The venv borrows this environment's installed dependencies (torch and the rest) through a .pth file, so the
test installs only the wheel itself and stays fast."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

from fixtures import ROOT

CHECK = r"""
import json, routing_engine
from routing_engine.resources import asset_dir, data_dir, streams_dir
from routing_engine.infra.scripts import SCRIPT_NAMES
from routing_engine.models.data import default_training_data
from routing_engine.domain.teams import DEFAULT_TEAMS_PATH
s = streams_dir()
print(json.dumps({
    "package": routing_engine.__file__,
    "streams": str(s), "lua": sorted(p.stem for p in s.glob("*.lua")),
    "schemas": sorted(p.name for p in s.glob("*.schema.json")),
    "dashboard": str(asset_dir("dashboards") / "index.html"),
    "agents": str(asset_dir("config") / "agents.yaml"),
    "teams": str(DEFAULT_TEAMS_PATH),
    "data": str(default_training_data()),
    "licence": str(data_dir() / "banking77" / "LICENSE-CC-BY-4.0.txt"),
    "scripts": list(SCRIPT_NAMES),
}))
"""


def test_wheel_installs_into_a_clean_venv_with_every_data_file(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(ROOT)],
                   check=True, timeout=300)
    (wheel,) = wheels.glob("routing_engine-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    # dependencies from this environment, after the venv's own site-packages (where the wheel goes)
    (site / "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300)

    help_ = subprocess.run([str(venv / "bin" / "routing-engine"), "--help"], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
    assert help_.returncode == 0, help_.stderr
    assert "up" in help_.stdout and "demo" in help_.stdout and "ROUTING_PREFIX" in help_.stdout

    got = json.loads(subprocess.check_output([str(py), "-c", CHECK], text=True, cwd=tmp_path, timeout=120))
    inside = str(site / "routing_engine")
    for key in ("package", "streams", "dashboard", "agents", "teams", "data", "licence"):
        assert got[key].startswith(inside), (key, got[key])  # from the wheel, not from the repository
        assert Path(got[key]).exists(), (key, got[key])
    assert set(got["scripts"]) | {"breaker"} <= set(got["lua"])
    repo_schemas = sorted(p.name for p in (ROOT / "streams").glob("*.schema.json"))
    assert got["schemas"] == repo_schemas
    assert got["data"].endswith("banking77/train.csv")
