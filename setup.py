"""Package layout (issue 13 §3): everything is imported under the one name ``alchimia``.

The folders keep the layout of the repository: ``alchimia/`` (the command line) is the
package ``alchimia`` and each of ``agent/``, ``coordinator/``, ``broker/``, ``models/`` and
``deploy/`` is mapped with ``package_dir`` to ``alchimia.agent``, ``alchimia.coordinator``,
... A wheel holds one top-level name, ``alchimia``. Every other setting is in pyproject.toml;
this file only lists the packages, so that a new sub-package needs no edit here.
"""

from setuptools import find_packages, setup

#: The folders mapped into the namespace (deploy/namespace.py rewrites imports to match).
SUBPACKAGES = ("agent", "coordinator", "broker", "models", "deploy")

package_dir = {"alchimia": "alchimia"}
packages = ["alchimia", *(f"alchimia.{p}" for p in find_packages("alchimia"))]
for folder in SUBPACKAGES:
    package_dir[f"alchimia.{folder}"] = folder
    packages += [f"alchimia.{folder}", *(f"alchimia.{folder}.{p}" for p in find_packages(folder))]

setup(package_dir=package_dir, packages=packages)
