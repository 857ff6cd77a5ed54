"""Model Compression Studio: prune, quantize, factorize and export models, with honest numbers."""

from pathlib import Path

__version__ = "0.1.0"


def resource_dir() -> Path:
    """The folder of files shipped with the studio: demo weights in zoo/, icons in icons/.

    It is the package `studio.resources`, which pyproject.toml maps onto the repository's
    resources/ folder: studio/resources/ inside an installed wheel, the checkout's resources/ in
    an editable install. A checkout run without installing and the PyInstaller build (its spec
    puts the folder at the bundle root) have no such package: there it is the resources/ folder
    beside the studio package."""
    from importlib.resources import files

    try:
        return Path(str(files("studio.resources")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "resources"
