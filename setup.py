"""nbdev-style setup: every field comes from settings.ini (the single source of metadata).

`nbdev_export` writes a pyproject.toml that marks the project's fields as dynamic, so this file must
fill every one of them or `pip install -e .` fails with "No configuration found for dynamic ...".
"""
from configparser import ConfigParser
from pathlib import Path

import setuptools

here = Path(__file__).parent
config = ConfigParser(delimiters=["="])
config.read(here / "settings.ini", encoding="utf-8")
cfg = config["DEFAULT"]

licenses = {"apache2": "Apache-2.0"}  # SPDX expression (license classifiers are deprecated)
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable", "6 - Mature", "7 - Inactive"]
py_versions = "3.10 3.11 3.12 3.13".split()
min_python = cfg["min_python"]


def reqs(key):
    return cfg.get(key, "").split()


notebooks, test = reqs("notebook_requirements"), reqs("test_requirements")
readme = here / "README.md"

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else cfg["description"],
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    url=cfg["git_url"],
    project_urls={"Source": cfg["git_url"], "Documentation": cfg["doc_host"] + cfg["doc_baseurl"]},
    license=licenses[cfg["license"]],
    keywords=cfg["keywords"].split(),
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"])],
        "Intended Audience :: " + cfg["audience"],
        "Natural Language :: " + cfg["language"],
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ] + ["Programming Language :: Python :: " + v for v in py_versions[py_versions.index(min_python):]],
    packages=setuptools.find_packages(include=[cfg["lib_name"], cfg["lib_name"] + ".*"]),
    include_package_data=True,
    python_requires=">=" + min_python,
    install_requires=reqs("requirements"),
    extras_require={"notebooks": notebooks, "test": test, "dev": notebooks + test},
    entry_points={
        "console_scripts": cfg["console_scripts"].split(),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    zip_safe=False,
)
