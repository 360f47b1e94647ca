"""Packaging hook: ``config.yaml`` and ``conf/`` live at the top of the repository (where
``python main.py`` finds them); a built wheel carries a copy inside the package
(``imbalance/_config``), which :data:`imbalance.config.CONFIG_DIR` points to when the package is
installed without the repository (``pip install .``)."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithConfig(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "imbalance" / "_config"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        shutil.copy2(ROOT / "config.yaml", target / "config.yaml")
        shutil.copytree(ROOT / "conf", target / "conf", ignore=shutil.ignore_patterns("__pycache__"))


setup(cmdclass={"build_py": BuildWithConfig})
