"""Small functions that run on engines on the client's behalf.

`push`, `pull`, `map`, `sync_imports` and friends are `apply` calls of these helpers. They live
in an importable module so that pickle sends them by reference (a few bytes) instead of by
value, and they act on the engine's user namespace: the namespace `%px` code and interactive
functions see. `_push` and `_pull` keep ipyparallel's names because AsyncResults are named after
the function applied (`<AsyncResult(_push): finished>`).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Callable

from .serialize import current_namespace


def _shell() -> Any:
    """The running IPython shell, if any (without importing IPython where nobody has)."""
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


def user_namespace() -> dict[str, Any]:
    """The engine's user namespace: IPython's `user_ns` inside a kernel, else `__main__`'s."""
    shell = _shell()
    if shell is not None:
        return shell.user_ns
    return current_namespace()


def _push(namespace: dict[str, Any]) -> None:
    """Assign each name of `namespace` in the user namespace (names may be any assignment target,
    e.g. `a.b`, as in ipyparallel)."""
    user_ns = user_namespace()
    for name, value in namespace.items():
        if name.isidentifier():
            user_ns[name] = value
        else:
            holder = "_parallax_push_value_"
            user_ns[holder] = value
            try:
                exec(f"{name} = {holder}", user_ns)
            finally:
                user_ns.pop(holder, None)


def _pull(names: str | list[str] | tuple[str, ...] | set[str]) -> Any:
    """The value of `names` (an expression, or a list of them) in the user namespace."""
    user_ns = user_namespace()
    if isinstance(names, str):
        return _lookup(names, user_ns)
    return [_lookup(name, user_ns) for name in names]


def _lookup(name: str, user_ns: dict[str, Any]) -> Any:
    if name.isidentifier():
        try:
            return user_ns[name]
        except KeyError:
            raise NameError(f"name '{name}' is not defined") from None
    return eval(name, user_ns)


def map_chunk(f: Callable[..., Any], *sequences: Any) -> list[Any]:
    """`list(map(f, *sequences))`: one task of a `view.map`."""
    return list(map(f, *sequences))


def import_into_namespace(name: str, fromlist: list[str] | tuple[str, ...] | None, level: int) -> None:
    """`import name` (or `from name import fromlist`) in the user namespace: the engine side of
    `sync_imports`."""
    user_ns = user_namespace()
    module = __import__(name, user_ns, user_ns, fromlist or (), max(level, 0))
    if fromlist:
        for key in fromlist:
            user_ns[key] = getattr(module, key)
    else:
        top = name.partition(".")[0]
        user_ns[top] = sys.modules[top]


def clear_namespace() -> None:
    """Forget the user's variables (IPython's `%reset -f`, or clearing `__main__` outside it)."""
    shell = _shell()
    if shell is not None:
        shell.reset(new_session=False)
        return
    namespace = user_namespace()
    for name in [n for n in namespace if not n.startswith("__")]:
        del namespace[name]


def interactive(f: Callable[..., Any]) -> Callable[..., Any]:
    """Make `f` behave as if defined in a notebook: on an engine its globals are the user
    namespace. (A decorator, as in ipyparallel.)"""
    if isinstance(f, types.FunctionType):
        main = sys.modules["__main__"]
        f = types.FunctionType(f.__code__, main.__dict__, f.__name__, f.__defaults__, f.__closure__)
        f.__module__ = "__main__"
    return f


class _Requiring:
    """`f` with modules imported into the user namespace before each call (see `require`)."""

    def __init__(self, f: Callable[..., Any], modules: list[str], functions: list[Callable[..., Any]]):
        self.f = f
        self.modules = modules
        self.functions = functions
        self.__name__ = getattr(f, "__name__", "f")
        self.__doc__ = getattr(f, "__doc__", None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        user_ns = user_namespace()
        for name in self.modules:
            importlib.import_module(name)
            top = name.partition(".")[0]
            user_ns[top] = sys.modules[top]
        for function in self.functions:
            user_ns[function.__name__] = function
        return self.f(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<require {', '.join(self.modules)}: {self.__name__}>"


def require(*requirements: Any, **named: Any) -> Callable[[Callable[..., Any]], _Requiring]:
    """Decorator: before the function runs on an engine, import the named modules (strings or
    module objects) into the user namespace and define the given functions there."""
    modules: list[str] = []
    functions: list[Callable[..., Any]] = []
    for requirement in (*requirements, *named.values()):
        if isinstance(requirement, str):
            modules.append(requirement)
        elif isinstance(requirement, types.ModuleType):
            modules.append(requirement.__name__)
        elif callable(requirement):
            functions.append(requirement)
        else:
            raise TypeError(f"require() takes module names, modules or functions, not {requirement!r}")

    def decorator(f: Callable[..., Any]) -> _Requiring:
        return _Requiring(f, modules, functions)

    return decorator
