"""Where the data folders (agents/, envs/) live, installed or in a source checkout."""

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder holding the YAML data `name` ("agents" or "envs").

    A wheel ships them as rl_selfdistill/_data/<name>; a source checkout or editable
    install finds them at the repository root.
    """
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"data folder {name!r} not found beside {_PACKAGE_DIR}; reinstall rl-selfdistill")
