"""A built wheel carries the MONAI Label app (apps/lnnode: main.py, lib/, the demo weights) as lnnode/app,
where ``lnnode.appdir`` finds it; everything else is in pyproject.toml. An editable install uses the
checkout's apps/lnnode directly."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

APP = Path(__file__).resolve().parent / "apps" / "lnnode"
APP_FILES = ("main.py", "lib/**/*.py", "model/demo/*.pt", "model/demo/*.md")


class BuildPyWithApp(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "lnnode" / "app"
        for pattern in APP_FILES:
            for source in APP.glob(pattern):
                dest = target / source.relative_to(APP)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, dest)


setup(cmdclass={"build_py": BuildPyWithApp})
