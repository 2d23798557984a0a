"""Import ccxt without loading its hundred-odd exchanges.

``import ccxt`` runs a package ``__init__`` that imports every exchange class
ccxt has: about 50 MB per process, of which execq uses two. ``install()``
registers the ``ccxt`` package without running that ``__init__``: its base
(``Exchange``, the error classes) is loaded at once, an exchange class when
it is first asked for (``exchange_class``), and any other attribute of the
package loads the real ``__init__`` after all, so nothing that expects the
whole of ccxt breaks. It must run before anything imports ccxt: the
``workers`` package does it first thing.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any


def install() -> None:
    """Register the lean ``ccxt`` package unless ccxt was imported already."""
    if "ccxt" in sys.modules:
        return
    spec = importlib.util.find_spec("ccxt")
    if spec is None or spec.loader is None:
        return  # not installed: the import error surfaces where ccxt is used
    package = importlib.util.module_from_spec(spec)
    sys.modules["ccxt"] = package
    try:
        from ccxt.base import errors
        from ccxt.base.exchange import Exchange
    except BaseException:
        del sys.modules["ccxt"]
        raise
    package.__dict__.update({name: getattr(errors, name) for name in errors.__all__})
    package.__dict__["Exchange"] = Exchange
    package.__dict__["__getattr__"] = _whole_package(package, spec)


def exchange_class(name: str) -> type:
    """The ccxt exchange class ``name`` (e.g. ``binanceusdm``), loading only its module."""
    module = importlib.import_module(f"ccxt.{name}")
    found = getattr(module, name, None)
    if not isinstance(found, type):
        raise AttributeError(f"ccxt has no exchange {name!r}")
    # Importing the submodule set the package attribute to the module; ccxt's
    # own __init__ makes it the class, and so do we.
    setattr(sys.modules["ccxt"], name, found)
    return found


def _whole_package(package: ModuleType, spec: Any) -> Any:
    loaded = False
    lock = threading.Lock()

    def load(name: str) -> Any:
        nonlocal loaded
        if name.startswith("__"):
            raise AttributeError(name)
        # Something wants more of ccxt than execq loads: run the real __init__,
        # once, while other threads asking for a missing name wait for it.
        with lock:
            if not loaded:
                spec.loader.exec_module(package)
                loaded = True
        try:
            return package.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'ccxt' has no attribute {name!r}") from None

    return load
