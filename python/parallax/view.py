"""Views: how work is sent to engines.

- `DirectView` (`rc[0]`, `rc[:]`, `rc.direct_view('all')`): every call runs on each of its engines
  (one request per engine); also data movement (`push`, `pull`, `scatter`, `gather`,
  `view['x']`), `execute` and `run` of code, `sync_imports`.
- `LoadBalancedView` (`rc.load_balanced_view()`): each call runs once, on whichever engine the
  controller's scheduler picks; `retries`, `timeout` and the dependencies `after` / `follow`
  travel in the request's metadata.

`map` on a DirectView sends one task per engine (contiguous partitions, as `scatter` cuts them);
on a LoadBalancedView it sends chunks of `chunksize` items (chosen automatically when not given,
see `_partition.auto_chunksize`). Data movement is `apply` of the small helpers in `_remote`.
"""

from __future__ import annotations

import builtins
import collections
import concurrent.futures
import inspect
import math
import queue
import warnings
from contextlib import contextmanager
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable, Iterator

from . import _partition, _remote
from . import dependency as _dependency
from .asyncresult import AsyncMapResult, AsyncResult, Task, _completion_lock, _composite, getname
from .serialize import serialize_call

if TYPE_CHECKING:
    from .client import Client


class View:
    """What DirectView and LoadBalancedView share: flags, apply, map, waiting and control."""

    _flag_names = ["targets", "block", "track", "label"]

    def __init__(self, client: Client, targets: Any = None, **flags: Any) -> None:
        self.client = client
        self.block = client.block
        self.track = False
        self.label = None
        self.targets = targets
        self.history: list[str] = []
        self.set_flags(**flags)

    def __repr__(self) -> str:
        text = str(self.targets)
        if len(text) > 16:
            text = text[:12] + "...]"
        return f"<{type(self).__name__} {text}>"

    def __len__(self) -> int:
        if isinstance(self.targets, list):
            return len(self.targets)
        if isinstance(self.targets, int):
            return 1
        return len(self.client)

    @property
    def outstanding(self) -> set[str]:
        """msg_ids sent through this view that have no reply yet."""
        pending = self.client.outstanding
        return {msg_id for msg_id in self.history if msg_id in pending}

    @property
    def results(self) -> Any:
        return self.client.results

    # -- flags ------------------------------------------------------------------------------------

    def set_flags(self, **flags: Any) -> View:
        """Set flags (block, targets, track, label; retries, timeout for load balancing)."""
        for name, value in flags.items():
            if name not in self._flag_names:
                raise KeyError(f"Invalid name: {name!r}")
            setattr(self, name, value)
        return self

    @contextmanager
    def temp_flags(self, **flags: Any) -> Iterator[None]:
        """Set flags for the duration of a `with` block."""
        saved = {name: getattr(self, name) for name in self._flag_names}
        self.set_flags(**flags)
        try:
            yield
        finally:
            self.set_flags(**saved)

    # -- apply ------------------------------------------------------------------------------------

    def _really_apply(self, f: Callable[..., Any], args: tuple = (), kwargs: dict | None = None,
                      block: bool | None = None, **options: Any) -> Any:
        raise NotImplementedError

    def apply(self, __f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call `f(*args, **kwargs)` remotely: the result if `block`, else an AsyncResult."""
        return self._really_apply(__f, args, kwargs)

    def apply_async(self, __f: Callable[..., Any], *args: Any, **kwargs: Any) -> AsyncResult:
        """Call `f(*args, **kwargs)` remotely without waiting: an AsyncResult."""
        return self._really_apply(__f, args, kwargs, block=False)

    def apply_sync(self, __f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call `f(*args, **kwargs)` remotely and wait for the result."""
        return self._really_apply(__f, args, kwargs, block=True)

    def _finish(self, ar: AsyncResult, block: bool) -> Any:
        """Record the call's msg_ids and return the AsyncResult, or its value when blocking
        (Ctrl-C while waiting hands back the AsyncResult, as ipyparallel does)."""
        self.history.extend(ar.msg_ids)
        if block:
            try:
                return ar.get()
            except KeyboardInterrupt:
                return ar
        return ar

    # -- map --------------------------------------------------------------------------------------

    def map(self, f: Callable[..., Any], *sequences: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def map_async(self, f: Callable[..., Any], *sequences: Any, **kwargs: Any) -> AsyncMapResult:
        """`map` without waiting: an AsyncMapResult."""
        if "block" in kwargs:
            raise TypeError("map_async doesn't take a `block` keyword argument.")
        return self.map(f, *sequences, block=False, **kwargs)

    def map_sync(self, f: Callable[..., Any], *sequences: Any, **kwargs: Any) -> list[Any]:
        """`map`, waiting for the list of results."""
        if "block" in kwargs:
            raise TypeError("map_sync doesn't take a `block` keyword argument.")
        return self.map(f, *sequences, block=True, **kwargs)

    def imap(self, f: Callable[..., Any], *sequences: Any, **kwargs: Any) -> Iterator[Any]:
        """Iterate over `map`'s results as they arrive."""
        return iter(self.map_async(f, *sequences, **kwargs))

    # -- decorators -------------------------------------------------------------------------------

    def remote(self, block: bool | None = None, **flags: Any) -> Callable[[Callable[..., Any]], RemoteFunction]:
        """Decorator: calling the function runs it through this view (`view.apply`)."""
        block = self.block if block is None else block
        return remote(self, block=block, **flags)

    def parallel(self, dist: str = "b", block: bool | None = None, **flags: Any) -> Callable[[Callable[..., Any]], ParallelFunction]:
        """Decorator: calling the function on sequences runs it on partitions of them (its
        `.map` maps element-wise)."""
        block = self.block if block is None else block
        return parallel(self, dist=dist, block=block, **flags)

    # -- waiting and control ------------------------------------------------------------------------

    def wait(self, jobs: Any = None, timeout: float = -1) -> bool:
        """Wait for `jobs` (default: everything sent through this view)."""
        return self.client.wait(self.history if jobs is None else jobs, timeout)

    def abort(self, jobs: Any = None, targets: Any = None, block: bool | None = None) -> None:
        """Abort queued tasks (default: this view's outstanding ones)."""
        jobs = list(self.outstanding) if jobs is None else jobs
        return self.client.abort(jobs=jobs, block=block)

    def queue_status(self, targets: Any = None, verbose: bool = False) -> dict[Any, Any]:
        targets = self.targets if targets is None else targets
        return self.client.queue_status(targets="all" if targets is None else targets, verbose=verbose)

    def purge_results(self, jobs: Any = (), targets: Any = ()) -> None:
        if targets is None or targets == "all":
            targets = self.targets
        return self.client.purge_results(jobs=jobs, targets=targets)

    def shutdown(self, targets: Any = None, restart: bool = False, hub: bool = False, block: bool | None = None) -> None:
        return self.client.shutdown(targets=targets, restart=restart, hub=hub, block=block)

    def get_result(self, indices_or_msg_ids: Any = None, block: bool | None = None, owner: bool = False) -> AsyncResult:
        """An AsyncResult for earlier calls (history indices are this view's)."""
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        if isinstance(indices_or_msg_ids, int):
            indices_or_msg_ids = self.history[indices_or_msg_ids]
        elif isinstance(indices_or_msg_ids, (list, tuple, set)):
            indices_or_msg_ids = [self.history[i] if isinstance(i, int) else i for i in indices_or_msg_ids]
        return self.client.get_result(indices_or_msg_ids, block=block, owner=owner)

    @property
    def executor(self) -> ViewExecutor:
        """A concurrent.futures.Executor submitting through this view."""
        return ViewExecutor(self)


class DirectView(View):
    """Runs each call on every one of its engines; also moves data to and from them."""

    def _targets(self, targets: Any) -> list[int]:
        return self.client._build_targets(self.targets if targets is None else targets)

    def _really_apply(self, f: Callable[..., Any], args: tuple = (), kwargs: dict | None = None,
                      targets: Any = None, block: bool | None = None, track: bool | None = None,
                      label: Any = None) -> Any:
        block = self.block if block is None else block
        label = self.label if label is None else label
        track = self.track if track is None else track
        targets = self.targets if targets is None else targets
        ids = self.client._build_targets(targets)
        call = serialize_call(f, args, kwargs)
        tasks = self.client._submit_apply_each(call, ids, label=label, track=bool(track))
        single = isinstance(targets, int)
        ar = AsyncResult(self.client, tasks[0] if single else tasks, fname=getname(f), targets=ids)
        return self._finish(ar, block)

    def map(self, f: Callable[..., Any], *sequences: Any, block: bool | None = None, track: bool = False,
            return_exceptions: bool = False, label: Any = None) -> Any:
        """Parallel `map(f, *sequences)`: one task per engine, each mapping f over a contiguous
        partition. The result if blocking (a list), else an AsyncMapResult."""
        if not sequences:
            raise TypeError("map() needs at least one sequence to map onto")
        block = self.block if block is None else block
        flags = {"track": True} if track else {}
        return ParallelFunction(self, f, block=block, return_exceptions=return_exceptions, label=label,
                                **flags).map(*sequences)

    # -- code -------------------------------------------------------------------------------------

    def execute(self, code: str, silent: bool = False, targets: Any = None, block: bool | None = None,
                label: Any = None) -> AsyncResult:
        """Run `code` in each engine's namespace (as %px does). Returns the AsyncResult (after
        waiting, if blocking); outputs are in its stdout / stderr / outputs / execute_result."""
        if not isinstance(code, str):
            raise TypeError(f"code must be text, not {type(code)}")
        block = self.block if block is None else block
        label = self.label if label is None else label
        targets = self.targets if targets is None else targets
        ids = self.client._build_targets(targets)
        tasks = [self.client._submit_execute(code, e, silent=silent, label=label) for e in ids]
        single = isinstance(targets, int)
        ar = AsyncResult(self.client, tasks[0] if single else tasks, fname="execute", targets=ids)
        self.history.extend(ar.msg_ids)
        if block:
            try:
                ar.get()
            except KeyboardInterrupt:
                pass
        return ar

    def run(self, filename: str, targets: Any = None, block: bool | None = None, label: Any = None) -> AsyncResult:
        """Execute the contents of `filename` on the engines."""
        with open(filename) as source:
            code = source.read() + "\n"
        return self.execute(code, block=block, targets=targets, label=label)

    # -- data -------------------------------------------------------------------------------------

    def push(self, ns: dict[str, Any], targets: Any = None, block: bool | None = None, track: bool | None = None) -> Any:
        """Assign the names of `ns` in the engines' namespaces."""
        if not isinstance(ns, dict):
            raise TypeError(f"Must be a dict, not {type(ns)}")
        return self._really_apply(_remote._push, (ns,), targets=targets, block=block, track=track)

    def pull(self, names: str | list[str] | tuple[str, ...], targets: Any = None, block: bool | None = None) -> Any:
        """The values of `names` (one name or a list) in the engines' namespaces."""
        if isinstance(names, (list, tuple, set)):
            for name in names:
                if not isinstance(name, str):
                    raise TypeError(f"keys must be str, not type {type(name)!r}")
        elif not isinstance(names, str):
            raise TypeError(f"names must be strs, not {names!r}")
        return self._really_apply(_remote._pull, (names,), targets=targets, block=block)

    def update(self, ns: dict[str, Any]) -> Any:
        """push(ns) with this view's flags."""
        return self.push(ns, block=self.block)

    def get(self, key_s: str | list[str]) -> Any:
        """pull(key_s), waiting for the values."""
        return self.pull(key_s, block=True)

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def scatter(self, key: str, seq: Any, dist: str = "b", flatten: bool = False, targets: Any = None,
                block: bool | None = None, track: bool | None = None) -> AsyncResult | None:
        """Cut `seq` into one contiguous partition per engine and assign each to `key` there
        (the first len % n engines get one item more; arrays are split along axis 0).
        flatten=True assigns a 1-item partition as the item itself."""
        block = self.block if block is None else block
        track = self.track if track is None else track
        ids = self._targets(targets)
        split, _join = _partition.distribution(dist)
        n = len(seq)
        tasks = []
        for index, engine_id in enumerate(ids):
            part = split(seq, index, len(ids), n)
            value = part[0] if flatten and len(part) == 1 else part
            call = serialize_call(_remote._push, ({key: value},))
            tasks.append(self.client._submit_apply(call, {"engine": engine_id}, engine_id=engine_id,
                                                   track=bool(track)))
        ar = AsyncResult(self.client, tasks, fname="scatter", targets=ids)
        self.history.extend(ar.msg_ids)
        if block:
            ar.get()
            return None
        return ar

    def gather(self, key: str, dist: str = "b", targets: Any = None, block: bool | None = None) -> Any:
        """Pull `key` from each engine and join the pieces (the inverse of scatter)."""
        block = self.block if block is None else block
        ids = self._targets(targets)
        _split, join = _partition.distribution(dist)
        call = serialize_call(_remote._pull, (key,))
        tasks = self.client._submit_apply_each(call, ids)
        ar = AsyncMapResult(self.client, tasks, joiner=join, fname="gather")
        return self._finish(ar, block)

    def clear(self, targets: Any = None, block: bool | None = None) -> Any:
        """Clear the engines' user namespaces."""
        return self._really_apply(_remote.clear_namespace, (), targets=targets, block=block)

    @contextmanager
    def sync_imports(self, local: bool = True, quiet: bool = False) -> Iterator[None]:
        """Context manager: the imports in its block also run on the engines
        (`with view.sync_imports(): import numpy` prints `importing numpy on engine(s)`).
        `import x as y` imports x remotely under its own name."""
        if not local:
            raise NotImplementedError("remote-only imports are not implemented; use local=True")
        real_import = builtins.__import__
        imported: set[str] = set()
        results: list[AsyncResult] = []
        frame = inspect.currentframe()
        # The `with` statement's frame: out of this generator, then out of contextlib.
        block_frame = frame.f_back.f_back if frame and frame.f_back else None

        def view_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
            caller = inspect.currentframe()
            caller = caller.f_back if caller else None
            if caller is not block_frame:
                return real_import(name, globals, locals, fromlist, level)
            module = real_import(name, globals, locals, fromlist, level)
            key = name + ":" + ",".join(fromlist or [])
            if level <= 0 and key not in imported:
                imported.add(key)
                if not quiet:
                    if fromlist:
                        print(f"importing {','.join(fromlist)} from {name} on engine(s)")
                    else:
                        print(f"importing {name} on engine(s)")
                results.append(self.apply_async(_remote.import_into_namespace, name, list(fromlist or []), level))
            return module

        builtins.__import__ = view_import
        try:
            yield
        finally:
            builtins.__import__ = real_import
        for result in results:
            result.get()

    @property
    def importer(self) -> Any:
        return self.sync_imports(True)

    def use_cloudpickle(self) -> None:
        """Nothing to do: Parallax always pickles calls with cloudpickle."""

    def use_dill(self) -> None:
        """Nothing to do: Parallax pickles calls with cloudpickle, which covers closures."""

    def use_pickle(self) -> None:
        """Nothing to do: Parallax always pickles calls with cloudpickle."""

    def activate(self, suffix: str = "") -> None:
        """Register %px / %%px (with `suffix`) for this view in IPython. Under the parallax kernel
        the magics are native and this is not needed."""
        from ._magics import register

        register(self, suffix)


class LoadBalancedView(View):
    """Runs each call once, on an engine the controller's scheduler picks."""

    _flag_names = ["targets", "block", "track", "label", "follow", "after", "timeout", "retries"]

    def __init__(self, client: Client, targets: Any = None, **flags: Any) -> None:
        self.retries = 0
        self.timeout: float | None = None
        self.follow = None
        self.after = None
        super().__init__(client, targets=targets, **flags)

    def set_flags(self, **flags: Any) -> LoadBalancedView:
        for name in ("follow", "after"):
            if name in flags:
                _dependency.render(flags[name])  # raises ValueError before any flag is set
        if "timeout" in flags:
            timeout = flags["timeout"]
            if not isinstance(timeout, (int, float, type(None))):
                raise TypeError(f"Invalid type for timeout: {type(timeout)!r}")
            if timeout is not None and timeout < 0:
                raise ValueError(f"Invalid timeout: {timeout}")
        if "retries" in flags and not isinstance(flags["retries"], int):
            raise TypeError(f"retries must be int, not {type(flags['retries'])!r}")
        super().set_flags(**flags)
        return self

    def _routing(self, targets: Any = None, retries: int | None = None, timeout: float | None = None,
                 after: Any = None, follow: Any = None) -> dict[str, Any]:
        targets = self.targets if targets is None else targets
        retries = self.retries if retries is None else retries
        timeout = self.timeout if timeout is None else timeout
        ids = None if targets is None else self.client._build_targets(targets)
        timeout = float(timeout) if timeout and math.isfinite(timeout) else None  # inf: no timeout
        routing = {"balanced": True, "targets": ids, "retries": int(retries), "timeout": timeout}
        for name, dependency in (("after", self.after if after is None else after),
                                 ("follow", self.follow if follow is None else follow)):
            rendered = _dependency.render(dependency)
            if rendered is not None:
                routing[name] = rendered
        return routing

    def _really_apply(self, f: Callable[..., Any], args: tuple = (), kwargs: dict | None = None,
                      block: bool | None = None, track: bool | None = None, after: Any = None,
                      follow: Any = None, timeout: float | None = None, targets: Any = None,
                      retries: int | None = None, label: Any = None) -> Any:
        block = self.block if block is None else block
        label = self.label if label is None else label
        track = self.track if track is None else track
        routing = self._routing(targets, retries, timeout, after, follow)
        task = self.client._submit_apply(serialize_call(f, args, kwargs), routing, label=label, track=bool(track))
        return self._finish(AsyncResult(self.client, task, fname=getname(f)), block)

    def map(self, f: Callable[..., Any], *sequences: Any, block: bool | None = None, chunksize: int | None = None,
            ordered: bool = True, return_exceptions: bool = False, label: Any = None) -> Any:
        """Parallel `map(f, *sequences)`, load-balanced in chunks of `chunksize` items (default:
        about 8 chunks per engine). The list of results if blocking, else an AsyncMapResult
        (iterable as chunks arrive; in arrival order when ordered=False)."""
        if not sequences:
            raise TypeError("map() needs at least one sequence to map onto")
        block = self.block if block is None else block
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, not {chunksize}")
        pf = ParallelFunction(self, f, block=block, chunksize=chunksize, ordered=ordered,
                              return_exceptions=return_exceptions, label=label)
        return pf.map(*sequences)

    def imap(self, f: Callable[..., Any], *sequences: Any, ordered: bool = True, max_outstanding: int | str = "auto",
             chunksize: int = 1, return_exceptions: bool = False) -> Iterator[Any]:
        """Lazily map over (possibly endless) iterables: keeps at most `max_outstanding` chunks
        of `chunksize` items in flight (default: two per engine; 0: no limit) and yields results
        as they come, in order or (ordered=False) as they arrive."""
        if not sequences:
            raise TypeError("imap() needs at least one sequence to map onto")
        if max_outstanding == "auto":
            max_outstanding = 2 * max(len(self), 1)
        return _LazyMap(self, f, zip(*sequences), int(max_outstanding), chunksize, ordered, return_exceptions).results()


class _LazyMap:
    """The machinery of LoadBalancedView.imap: submits chunks as results are consumed."""

    def __init__(self, view: LoadBalancedView, f: Callable[..., Any], items: Iterator[tuple], max_outstanding: int,
                 chunksize: int, ordered: bool, return_exceptions: bool) -> None:
        self.view = view
        self.f = f
        self.items = items
        self.limit = max_outstanding
        self.chunksize = max(1, chunksize)
        self.ordered = ordered
        self.return_exceptions = return_exceptions
        self.in_flight: collections.deque[Task] = collections.deque()
        self.arrived: queue.SimpleQueue[Task] = queue.SimpleQueue()
        self.exhausted = False
        self._fill()  # start working before the first result is asked for

    def _submit_next(self) -> bool:
        chunk = list(islice(self.items, self.chunksize))
        if not chunk:
            self.exhausted = True
            return False
        call = serialize_call(_remote.map_chunk, (self.f, *zip(*chunk)))
        task = self.view.client._submit_apply(call, self.view._routing(), chunk=len(chunk))
        self.view.history.append(task.msg_id)
        self.in_flight.append(task)
        if not self.ordered:
            with _completion_lock:
                if not task.add_listener(self.arrived.put):
                    self.arrived.put(task)
        return True

    def _fill(self) -> None:
        while not self.exhausted and (self.limit <= 0 or len(self.in_flight) < self.limit):
            if not self._submit_next():
                break

    def _next_done(self) -> Task:
        if self.ordered:
            task = self.in_flight.popleft()
            task.wait(None)
            return task
        task = self.arrived.get()
        self.in_flight.remove(task)
        return task

    def results(self) -> Iterator[Any]:
        while self.in_flight:
            task = self._next_done()
            self._fill()
            value = task.value()
            if task.failed:
                if self.return_exceptions:
                    yield value
                    continue
                raise _composite([task], getname(self.f))
            yield from value


class RemoteFunction:
    """A function whose calls run through a view (`@view.remote()`)."""

    def __init__(self, view: View, f: Callable[..., Any], block: bool | None = None, **flags: Any) -> None:
        self.view = view
        self.func = f
        self.block = block
        self.flags = flags
        self.__name__ = getname(f)
        if getattr(f, "__doc__", None):
            self.__doc__ = f"{type(self).__name__} wrapping:\n{f.__doc__}"
        try:
            self.__signature__ = inspect.signature(f)
        except (TypeError, ValueError):
            pass

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        block = self.view.block if self.block is None else self.block
        with self.view.temp_flags(block=block, **self.flags):
            return self.view.apply(self.func, *args, **kwargs)


class ParallelFunction(RemoteFunction):
    """A function called on partitions of its sequence arguments (`@view.parallel()`); its
    `map` calls it element-wise. Also the engine of `view.map`."""

    def __init__(self, view: View, f: Callable[..., Any], dist: str = "b", block: bool | None = None,
                 chunksize: int | None = None, ordered: bool = True, return_exceptions: bool = False,
                 **flags: Any) -> None:
        super().__init__(view, f, block=block, **flags)
        self.chunksize = chunksize
        self.ordered = ordered
        self.return_exceptions = return_exceptions
        self.dist = dist
        self._split, self._join = _partition.distribution(dist)

    def __call__(self, *sequences: Any, _mapping: bool = False) -> Any:
        sequences = tuple(seq if hasattr(seq, "__len__") else list(seq) for seq in sequences)
        lengths = [len(seq) for seq in sequences]
        longest = max(lengths, default=0)
        if longest == 0:
            return []
        if not _mapping and min(lengths) != longest:
            raise ValueError(f"all sequences must have equal length, but have {lengths}")
        view = self.view
        with view.temp_flags(**self.flags):
            tasks = self._submit(sequences, longest, _mapping)
        ar = AsyncMapResult(view.client, tasks, joiner=self._join, fname=getname(self.func), ordered=self.ordered,
                            return_exceptions=self.return_exceptions)
        block = view.block if self.block is None else self.block
        return view._finish(ar, block)

    def _submit(self, sequences: tuple, longest: int, mapping: bool) -> list[Task]:
        """One task per engine (DirectView) or per chunk (LoadBalancedView), with the view's
        current flags."""
        view = self.view
        client = view.client
        balanced = isinstance(view, LoadBalancedView)
        if balanced:
            if self.chunksize:
                chunksize = self.chunksize
            elif mapping:
                chunksize = _partition.auto_chunksize(longest, len(view))
            else:
                chunksize = 1
            parts = _partition.chunk_count(longest, chunksize)
            destinations: list[Any] = [None] * parts
            routing = view._routing()
        else:
            if self.chunksize:
                warnings.warn("`chunksize` is ignored unless load balancing", UserWarning, stacklevel=4)
            destinations = client._build_targets(view.targets)
            parts = len(destinations)
        tasks = []
        for index, engine_id in enumerate(destinations):
            pieces = [self._split(seq, index, parts, longest) for seq in sequences]
            if sum(len(piece) for piece in pieces) == 0:
                continue
            if mapping:
                call = serialize_call(_remote.map_chunk, (self.func, *pieces))
                chunk = min(len(piece) for piece in pieces)
            else:
                call = serialize_call(self.func, pieces)
                chunk = 1
            if balanced:
                tasks.append(client._submit_apply(call, routing, chunk=chunk, label=view.label, track=view.track))
            else:
                tasks.append(client._submit_apply(call, {"engine": engine_id}, engine_id=engine_id, chunk=chunk,
                                                  label=view.label, track=view.track))
        return tasks

    def map(self, *sequences: Any) -> Any:
        """Call the function on each element (like builtin map, stopping at the shortest)."""
        return self(*sequences, _mapping=True)


def remote(view: View, block: bool | None = None, **flags: Any) -> Callable[[Callable[..., Any]], RemoteFunction]:
    """Decorator turning a function into a RemoteFunction on `view`."""

    def decorator(f: Callable[..., Any]) -> RemoteFunction:
        return RemoteFunction(view, f, block=block, **flags)

    return decorator


def parallel(view: View, dist: str = "b", block: bool | None = None, ordered: bool = True,
             **flags: Any) -> Callable[[Callable[..., Any]], ParallelFunction]:
    """Decorator turning a function into a ParallelFunction on `view`."""

    def decorator(f: Callable[..., Any]) -> ParallelFunction:
        return ParallelFunction(view, f, dist=dist, block=block, ordered=ordered, **flags)

    return decorator


class ViewExecutor(concurrent.futures.Executor):
    """concurrent.futures.Executor over a view: submit() is apply_async, map() is imap."""

    def __init__(self, view: View) -> None:
        self.view = view

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.view.apply_async(fn, *args, **kwargs)

    def map(self, fn: Callable[..., Any], *iterables: Any, timeout: float | None = None, chunksize: int = 1) -> Iterator[Any]:
        if isinstance(self.view, LoadBalancedView):
            return self.view.imap(fn, *iterables, chunksize=chunksize)
        return iter(self.view.map_async(fn, *iterables))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if wait:
            self.view.wait()


__all__ = ["View", "DirectView", "LoadBalancedView", "RemoteFunction", "ParallelFunction", "remote", "parallel"]
