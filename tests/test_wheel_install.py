"""The installed package, not the checkout: a wheel built from this repository, installed into a
fresh virtual environment, must migrate a new database on its own (`python -m bot migrate` run
from an empty folder). The Alembic scripts live inside the package (bot/migrations) for this.

The fresh environment gets the dependencies without the network and without the checkout: a
.pth file in its site-packages names this environment's site-packages. A path line in a .pth is
appended to sys.path, but the .pth files inside that folder (the editable install's finder among
them) are not run, so `import bot` can only find the installed wheel. The test checks that too.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from bot.store.database import MIGRATIONS_DIR
from bot.store.models import SEARCH_TABLE_PREFIX, Base

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180  # one subprocess step on a busy two-core machine; the whole module takes far less


def _run(command: list, *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, (f"{command} exited {result.returncode}\n"
                                    f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def _clean_environment() -> dict[str, str]:
    """The environment of a user's shell: nothing that points Python or the bot at the checkout."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("BOT_") and key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
                                                          "PYTHONSTARTUP", "PYTHONSAFEPATH"}}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _setuptools_for_local_build() -> bool:
    """Whether this environment's setuptools can build the project without build isolation
    (pyproject.toml asks for setuptools>=77; `pip install -e '.[test]'` installs it)."""
    try:
        return int(metadata.version("setuptools").split(".")[0]) >= 77
    except (metadata.PackageNotFoundError, ValueError):
        return False


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this repository, built from a copy of its sources (a build in place would
    leave build/ and egg-info behind in the checkout, and stale files in build/ can leak into
    the wheel)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", *(p.name for p in REPO_ROOT.glob("LICEN[CS]E*"))):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "bot", source / "bot",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    isolation = ["--no-build-isolation"] if _setuptools_for_local_build() else []  # else from PyPI
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "--quiet",
          "--wheel-dir", base / "dist", source], cwd=base)
    (built,) = (base / "dist").glob("smolbot-*.whl")
    return built


@pytest.fixture(scope="module")
def installed_python(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment holding the wheel, with this environment's packages (the
    dependencies) visible behind it; returns its python."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent)
    python = venv / "bin" / "python"
    # This environment's pip installs into the new one (the wheel first, while nothing else is
    # visible there, so pip sees no installed smolbot to replace).
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "--quiet", "--disable-pip-version-check", wheel], cwd=venv.parent, env=_clean_environment())
    site_packages = _site_packages_of(python, venv.parent)
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site_packages / "zz_dependencies_from_test_environment.pth").write_text("".join(f"{p}\n" for p in ours))
    return python


def _site_packages_of(python: Path, cwd: Path) -> Path:
    return Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     cwd=cwd, env=_clean_environment()).stdout.strip()).resolve()


def test_the_wheel_ships_the_migrations(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    versions = sorted(p.name for p in (REPO_ROOT / "bot" / "migrations" / "versions").glob("*.py"))
    assert versions, "no migration scripts in bot/migrations/versions"
    for name in ["env.py", "script.py.mako", *(f"versions/{v}" for v in versions)]:
        assert f"bot/migrations/{name}" in names, f"bot/migrations/{name} is not in {wheel.name}"
    assert not any(n.startswith("migrations/") for n in names)


def test_the_installed_package_is_the_wheel_not_the_checkout(installed_python, tmp_path):
    site_packages = _site_packages_of(installed_python, tmp_path)
    found = _run([installed_python, "-c",
                  "import bot, bot.store.database as d; print(bot.__file__); print(d.MIGRATIONS_DIR)"],
                 cwd=tmp_path, env=_clean_environment()).stdout.split("\n")
    package, migrations = Path(found[0]).resolve(), Path(found[1]).resolve()
    assert package.is_relative_to(site_packages), f"bot imported from {package}, not {site_packages}"
    assert not package.is_relative_to(REPO_ROOT)
    assert migrations == site_packages / "bot" / "migrations"
    assert (migrations / "versions").is_dir()


def test_the_installed_package_migrates_a_new_database(installed_python, tmp_path):
    workdir = tmp_path / "empty"  # no config.toml, no alembic.ini, no migrations/ next to it
    workdir.mkdir()
    database = tmp_path / "data" / "bot.db"
    env = {**_clean_environment(), "BOT_DATABASE_URL": f"sqlite+aiosqlite:///{database}"}
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    result = _run([installed_python, "-m", "bot", "migrate"], cwd=workdir, env=env)
    assert f"was new: its tables were created (schema revision {head})" in result.stdout
    assert list(workdir.iterdir()) == []
    again = _run([installed_python, "-m", "bot", "migrate"], cwd=workdir, env=env)
    assert f"is up to date (schema revision {head})" in again.stdout

    with sqlite3.connect(database) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        search = {name for name in tables if name.startswith(SEARCH_TABLE_PREFIX)}  # FTS5's, not models
        assert search and tables - search == {"alembic_version", *Base.metadata.tables}
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
        for table in Base.metadata.sorted_tables:  # every column of the models, e.g. messages.content
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table.name})")}
            assert columns == {column.name for column in table.columns}, table.name
