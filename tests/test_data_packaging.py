"""Packaging of the TFDS builders and the import-time behaviour of the package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]


def _python(code: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_pyproject_ships_every_package_and_builder_folder():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # the `test` extra installs tomli on Python 3.10
        import tomli as tomllib
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(config["packages"])
    source_packages = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "ssl4sar_jax").rglob("__init__.py")
    }
    assert source_packages <= packages, source_packages - packages
    assert "package-dir" not in config  # no aliasing: the import names are the folders
    builders = REPO / "ssl4sar_jax" / "builders"
    for name in ("caffe", "ssl4sar"):
        folder = builders / name
        assert (folder / f"{name}_dataset_builder.py").is_file()
        for meta in ("README.md", "CITATIONS.bib", "TAGS.txt", "checksums.tsv"):
            assert (folder / meta).is_file(), folder / meta
        assert "dummy_data/**/*" in config["package-data"][f"ssl4sar_jax.builders.{name}"]
    # The top-level datasets/ only points to the builders; a datasets/__init__.py would shadow
    # Hugging Face `datasets`.
    assert not (REPO / "datasets" / "__init__.py").exists()
    assert "ssl4sar_jax/builders/caffe" in (REPO / "datasets" / "README.md").read_text()


def test_importing_models_or_the_package_imports_neither_tfds_nor_pil():
    result = _python(
        "import sys\n"
        "import ssl4sar_jax, ssl4sar_jax.models, ssl4sar_jax.constants\n"
        "bad = [m for m in ('tensorflow_datasets', 'PIL', 'tensorflow', 'ssl4sar_jax.data',\n"
        "       'ssl4sar_jax.builders') if m in sys.modules]\n"
        "print('IMPORTED', bad)\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "IMPORTED []" in result.stdout, result.stdout


def test_builders_register_when_tfds_is_imported_after_the_package():
    code = (
        "import ssl4sar_jax\n"
        "import tensorflow_datasets as tfds\n"
        "names = tfds.list_builders(with_community_datasets=False)\n"
        "print('FOUND', 'caffe' in names, 'ssl4sar' in names)\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "FOUND True True" in result.stdout
    # The other order: TFDS first, then the package.
    result = _python(
        code.replace("import ssl4sar_jax\n", "").replace(
            "import tensorflow_datasets as tfds\n",
            "import tensorflow_datasets as tfds\nimport ssl4sar_jax\n",
        )
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "FOUND True True" in result.stdout


def test_explicit_register_returns_both_builders():
    from ssl4sar_jax import builders

    registered = builders.register()
    assert sorted(registered) == ["caffe", "ssl4sar"]
    import tensorflow_datasets as tfds

    assert tfds.builder_cls("caffe") is registered["caffe"]
