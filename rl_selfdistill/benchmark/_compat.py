"""Import-time compatibility between rliable's pinned `arch` (< 8) and pandas >= 3.

rliable 1.2 needs arch < 8 (arch 8 dropped the `random_state` argument rliable passes),
and arch 7 decorates a method with pandas' private `deprecate_kwarg(old, new)`, whose
pandas 3 signature gained a leading warning class. Without this, `import rliable` fails.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def patch_pandas_deprecate_kwarg() -> None:
    """Let `deprecate_kwarg("old", "new")` keep working on pandas 3; a no-op on pandas 2."""
    import pandas.util._decorators as decorators

    original = decorators.deprecate_kwarg
    if getattr(original, "_rl_selfdistill_compat", False):
        return
    if next(iter(inspect.signature(original).parameters)) != "klass":
        return

    def deprecate_kwarg(*args: Any, **kwargs: Any) -> Callable[..., Any]:
        if args and isinstance(args[0], str):
            args = (FutureWarning, *args)
        return original(*args, **kwargs)

    deprecate_kwarg._rl_selfdistill_compat = True  # type: ignore[attr-defined]
    decorators.deprecate_kwarg = deprecate_kwarg
