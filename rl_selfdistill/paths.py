"""Where the data folders (agents/, envs/) live, installed or in a source checkout; whether an output folder can be written."""

import errno
import os
import tempfile
from pathlib import Path

from rl_selfdistill.errors import UsageError

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


def check_writable_folder(folder: Path, what: str) -> None:
    """Refuse, as a one-line UsageError, an output folder this process could not create or write into.

    Checked before any expensive work. The nearest existing ancestor must be a folder in which a file can be
    created: a probe file is made and removed at once (os.access says yes to root even on a read-only mount),
    so nothing is left behind and the folder itself is not created here.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what} {str(folder)!r} cannot be created: {str(existing)!r} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        hint = "choose another folder" if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "check the path"
        raise UsageError(f"{what} {str(folder)!r} is not writable ({reason} in {str(existing)!r}); {hint}") from None
    os.close(handle)
    os.remove(probe)
