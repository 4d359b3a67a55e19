"""The HTTP server around the engine (`pipelines/`): API, service, accounts, backends, media, CLI.

See ARCHITECTURE.md for the layers. The version comes from one place, the package metadata (pyproject.toml);
run from a checkout that was never installed (a benchmark carried to a GPU box), it is read from there.
"""

from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    try:
        return version("imageserve")
    except PackageNotFoundError:  # a bare checkout: the same number, from the file the metadata is built from
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])


__version__ = _version()
