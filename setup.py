"""Which packages the distribution installs; the rest of the metadata is in setup.cfg.

The repository keeps ``cli/``, ``pipelines/`` and ``export/`` as top-level folders, but they are installed as
``mrcnn_tf2.cli``, ``mrcnn_tf2.pipelines`` and ``mrcnn_tf2.export``: the only top-level import name is
``mrcnn_tf2`` (``cli`` and ``export`` are names other distributions use too).
"""

from setuptools import find_packages, setup

SUBPACKAGE_FOLDERS = ("cli", "pipelines", "export")

packages = find_packages(include=["mrcnn_tf2", "mrcnn_tf2.*"])
for folder in SUBPACKAGE_FOLDERS:
    packages += [f"mrcnn_tf2.{name}" for name in find_packages(include=[folder, f"{folder}.*"])]

setup(packages=packages, package_dir={f"mrcnn_tf2.{folder}": folder for folder in SUBPACKAGE_FOLDERS})
