"""How calls and results travel: pickle protocol 5 with out-of-band buffers.

An `apply_request` carries `(f, args, kwargs)` as frame 0 = the pickle and frames 1.. = the raw
bytes of every large buffer inside it (numpy arrays, bytes, anything with a PickleBuffer), so
arrays are never copied into the pickle, never base64-encoded, and are sent with zmq's
zero-copy path. Results come back the same way.

Calls are pickled with cloudpickle, so lambdas, closures and functions defined in a notebook
travel by value. Functions defined interactively (`__module__ == "__main__"`: a notebook, a
script, `@interactive`) get ipyparallel's semantics on the engine: their globals are the
engine's user namespace, so `def f(): return a` sees an `a` pushed there. The globals such a
function captured on the client fill in what the namespace lacks; functions and classes it
captured that were themselves defined interactively replace the engine's copies, so editing a
helper in the notebook takes effect on the next call.

Results are pickled with cloudpickle too: functions and classes defined on the engine (by `%px`,
`run`, `execute`) live in the engine's `__main__`, which the client cannot import from, so they
must travel by value.

Between a client and an engine on the same host, buffers of 1 MiB or more may travel through
shared memory instead of as frames (`_shm`); the deserializers here accept both.
"""

from __future__ import annotations

import io
import pickle
import sys
import types
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import cloudpickle
from cloudpickle import cloudpickle as _cloudpickle_impl

from . import _shm

# Buffers at least this large travel as their own frames; smaller ones stay inside the pickle,
# where copying them is cheaper than a frame of their own.
OUT_OF_BAND_THRESHOLD = 64 * 1024
PICKLE_PROTOCOL = 5

_namespace: dict[str, Any] | None = None


def current_namespace() -> dict[str, Any]:
    """The namespace interactive functions are bound to while a call is being unpickled: the
    engine's user namespace on an engine, `__main__` elsewhere."""
    if _namespace is not None:
        return _namespace
    return sys.modules["__main__"].__dict__


@contextmanager
def bound_to(namespace: dict[str, Any]) -> Iterator[None]:
    """Unpickle interactive functions (and resolve References) in `namespace`."""
    global _namespace
    saved, _namespace = _namespace, namespace
    try:
        yield
    finally:
        _namespace = saved


# -- interactive functions --------------------------------------------------------------------------


def _is_interactive(obj: Any) -> bool:
    return getattr(obj, "__module__", None) == "__main__"


def _make_interactive_function(code: types.CodeType, closure: tuple | None) -> types.FunctionType:
    """The skeleton of an interactive function, bound to the current namespace. Its state
    (defaults, captured globals, closure values) is filled in by `_set_interactive_state` once
    pickle has memoized the skeleton, which lets recursive functions refer to themselves."""
    return types.FunctionType(code, current_namespace(), None, None, closure)


def _set_interactive_state(func: types.FunctionType, state: tuple) -> None:
    attributes, slots = state
    func.__dict__.update(attributes)
    captured = slots.pop("__globals__")
    closure_values = slots.pop("__closure__")
    slots.pop("_cloudpickle_submodules", None)
    namespace = func.__globals__
    for name, value in captured.items():
        if name not in namespace or _is_interactive_definition(value):
            namespace[name] = value
    if closure_values is not None:
        for cell, value_cell in zip(func.__closure__ or (), closure_values):
            try:
                cell.cell_contents = value_cell.cell_contents
            except ValueError:  # an empty cell (a name assigned after the function was defined)
                pass
    for name, value in slots.items():
        setattr(func, name, value)


def _is_interactive_definition(value: Any) -> bool:
    return isinstance(value, (types.FunctionType, type)) and _is_interactive(value)


def _interactive_reduce(func: types.FunctionType) -> tuple:
    closure = None if func.__closure__ is None else tuple(types.CellType() for _ in func.__closure__)
    state = _cloudpickle_impl._function_getstate(func)
    return (_make_interactive_function, (func.__code__, closure), state, None, None, _set_interactive_state)


class _CallPickler(cloudpickle.Pickler):
    """cloudpickle, except that interactive functions are rebuilt in the engine's namespace."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.FunctionType and obj.__module__ == "__main__":
            pickled = _stable_functions.get(obj)
            if pickled is not None:
                return _load_function, (pickled,)
            return _interactive_reduce(obj)
        return super().reducer_override(obj)


class _FunctionPickler(cloudpickle.Pickler):
    """Pickles one interactive function on its own (for `_StableFunctions`)."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.FunctionType and obj.__module__ == "__main__":
            return _interactive_reduce(obj)
        return super().reducer_override(obj)


_LOADED_FUNCTIONS_KEPT = 256
_loaded_functions: dict[tuple[int, bytes], Any] = {}


def _load_function(pickled: bytes) -> Any:
    """Unpickle a function pickled once by `_StableFunctions`. The engine keeps the function it
    built for each such pickle (per namespace), since the same one arrives with every call of a
    loop or a map: the pickle fully determines it."""
    namespace = current_namespace()
    key = (id(namespace), pickled)  # the function holds the namespace, so the id stays unique
    func = _loaded_functions.get(key)
    if func is None:
        func = pickle.loads(pickled)
        if len(_loaded_functions) >= _LOADED_FUNCTIONS_KEPT:
            del _loaded_functions[next(iter(_loaded_functions))]
        _loaded_functions[key] = func
    return func


_CONSTANT_TYPES = (type(None), bool, int, float, complex, str, bytes)


class _StableFunctions:
    """Pickles of interactive functions whose pickle cannot change between calls, so a function
    applied thousands of times (a load-balanced loop, a map) is pickled once.

    A function qualifies when it has no closure and no attributes, its defaults are constants,
    and every global it refers to is a module (modules travel by name) or not defined (a
    builtin, or a name the engine provides). Anything else (a captured list, a helper function)
    may change between calls, so such functions are pickled afresh every time. An entry is
    used only while the function still has the same code, defaults and modules.
    """

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[types.FunctionType, tuple] = weakref.WeakKeyDictionary()

    def _fingerprint(self, func: types.FunctionType) -> tuple | None:
        if func.__closure__ is not None or func.__dict__:
            return None
        for defaults in (func.__defaults__ or (), (func.__kwdefaults__ or {}).values()):
            if not all(type(value) in _CONSTANT_TYPES for value in defaults):
                return None
        globals_ = func.__globals__
        modules = []
        for name in _cloudpickle_impl._extract_code_globals(func.__code__):
            value = globals_.get(name)
            if value is None and name not in globals_:
                continue
            if type(value) is not types.ModuleType:
                return None
            modules.append(value)
        return (func.__code__, func.__defaults__, func.__kwdefaults__, func.__qualname__, *modules)

    def _entry(self, func: types.FunctionType) -> list | None:
        """[fingerprint, pickle, pickle of the call `func()` or None] while still valid."""
        fingerprint = self._fingerprint(func)
        if fingerprint is None:
            return None
        entry = self._entries.get(func)
        if entry is not None and entry[0] == fingerprint:  # items compare by identity first
            return entry
        stream = io.BytesIO()
        _FunctionPickler(stream, protocol=PICKLE_PROTOCOL).dump(func)
        entry = [fingerprint, stream.getvalue(), None]
        self._entries[func] = entry
        return entry

    def get(self, func: types.FunctionType) -> bytes | None:
        entry = self._entry(func)
        return None if entry is None else entry[1]

    def bare_call(self, func: types.FunctionType) -> bytes | None:
        """The pickled call `(func, (), {})`, for applying a function without arguments."""
        entry = self._entry(func)
        if entry is None:
            return None
        if entry[2] is None:
            entry[2] = _dump(_CallPickler, (func, (), {}))[0]
        return entry[2]


_stable_functions = _StableFunctions()


# -- references -------------------------------------------------------------------------------------


class Reference:
    """A name (or expression) evaluated in the engine's namespace when the call arrives:
    `view.apply(f, Reference('a'))` calls `f(a)` with the engine's own `a`."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"a Reference names a variable as a str, not {type(name).__name__}")
        self.name = name

    def __repr__(self) -> str:
        return f"<Reference: {self.name!r}>"

    def __reduce__(self) -> tuple[Callable[[str], Any], tuple[str]]:
        return _resolve_reference, (self.name,)


def _resolve_reference(name: str) -> Any:
    return eval(name, current_namespace())


# -- frames -----------------------------------------------------------------------------------------


def _dump(pickler_class: type, obj: Any) -> list[Any]:
    """Frame 0: the pickle; frames 1..: out-of-band buffers of at least OUT_OF_BAND_THRESHOLD."""
    out_of_band: list[Any] = []

    def keep_large(buffer: pickle.PickleBuffer) -> bool:
        view = buffer.raw()
        if view.nbytes < OUT_OF_BAND_THRESHOLD:
            return True  # serialize in band
        out_of_band.append(view)
        return False

    stream = io.BytesIO()
    pickler_class(stream, protocol=PICKLE_PROTOCOL, buffer_callback=keep_large).dump(obj)
    return [stream.getvalue(), *out_of_band]


def serialize_call(f: Callable[..., Any], args: tuple | list = (), kwargs: dict | None = None) -> list[Any]:
    """The buffers of an apply_request for `f(*args, **kwargs)`."""
    if not args and not kwargs and type(f) is types.FunctionType and f.__module__ == "__main__":
        pickled = _stable_functions.bare_call(f)
        if pickled is not None:
            return [pickled]
    return _dump(_CallPickler, (f, tuple(args), dict(kwargs or {})))


def deserialize_call(frames: list[Any], namespace: dict[str, Any]) -> tuple[Callable[..., Any], tuple, dict]:
    """`(f, args, kwargs)` from an apply_request's buffers, with interactive functions bound to
    `namespace`."""
    frames = _shm.attach(frames)
    if not frames:
        raise ValueError("the apply_request carries no buffers (expected the pickled call)")
    with bound_to(namespace):
        call = pickle.loads(frames[0], buffers=frames[1:])
    if not (isinstance(call, tuple) and len(call) == 3):
        raise ValueError("the apply_request's buffers do not hold an (f, args, kwargs) call")
    return call


def serialize_result(obj: Any) -> list[Any]:
    """The buffers of an apply_reply carrying `obj`."""
    if type(obj) in _CONSTANT_TYPES:  # what cloudpickle would write, without building a pickler
        return [pickle.dumps(obj, PICKLE_PROTOCOL)]
    return _dump(cloudpickle.Pickler, obj)


def deserialize_result(frames: list[Any]) -> Any:
    frames = _shm.attach(frames)
    if not frames:
        raise ValueError("the apply_reply carries no buffers (expected the pickled result)")
    return pickle.loads(frames[0], buffers=frames[1:])


__all__ = [
    "Reference",
    "serialize_call",
    "deserialize_call",
    "serialize_result",
    "deserialize_result",
    "bound_to",
    "current_namespace",
]
