"""Parallax: interactive parallel computing for Jupyter.

The Python side of Parallax, with ipyparallel 9's API, so that code written for ipyparallel runs
with `import parallax as ipp`:

- `Client` connects to a cluster (`parallax cluster start -n 4`) and hands out views:
  `rc[:]` / `rc.direct_view()` (`DirectView`: run on every engine, push / pull / scatter /
  gather) and `rc.load_balanced_view()` (`LoadBalancedView`: run anywhere, `map` in chunks).
- Calls return `AsyncResult` / `AsyncMapResult`; failures raise `RemoteError` /
  `CompositeError` carrying the engines' tracebacks.
- `Cluster` starts and stops a cluster from Python (`with Cluster(n=4) as rc: ...`).
- `engine` is the support that engines install in their Python kernels to serve `apply`.
- `jupyter` is the Jupyter server extension that mounts the Clusters page.

Layout: `_wire` (signing and framing, no I/O), `_zmqio` (the IO threads' socket plumbing),
`serialize` (pickling calls and results), `client` (with `_database`, the task-database
methods), `view`, `asyncresult`, `dependency`, `error`, `cluster`, `engine`, and the helpers `_partition` (how
sequences are cut), `_remote` (functions run on engines), `_display`, `_progress`, `_magics`.
"""

__version__ = "0.1.0"

from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION  # noqa: E402

from ._remote import interactive, require  # noqa: E402
from .asyncresult import AsyncHubResult, AsyncMapResult, AsyncResult  # noqa: E402
from .client import Client  # noqa: E402
from .cluster import Cluster  # noqa: E402
from .dependency import Dependency  # noqa: E402
from .error import (  # noqa: E402
    CompositeError,
    EngineError,
    ImpossibleDependency,
    InvalidDependency,
    IPythonError,
    KernelError,
    NoClusterError,
    NoEnginesRegistered,
    RemoteError,
    TaskAborted,
    TaskTimeout,
    TimeoutError,
    UnmetDependency,
)
from .serialize import Reference  # noqa: E402
from .view import DirectView, LoadBalancedView, ParallelFunction, RemoteFunction, View, parallel, remote  # noqa: E402

__all__ = [
    "__version__",
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "AsyncHubResult",
    "AsyncMapResult",
    "AsyncResult",
    "Client",
    "Cluster",
    "CompositeError",
    "Dependency",
    "DirectView",
    "EngineError",
    "IPythonError",
    "ImpossibleDependency",
    "InvalidDependency",
    "KernelError",
    "LoadBalancedView",
    "NoClusterError",
    "NoEnginesRegistered",
    "ParallelFunction",
    "Reference",
    "RemoteError",
    "RemoteFunction",
    "TaskAborted",
    "TaskTimeout",
    "TimeoutError",
    "UnmetDependency",
    "View",
    "interactive",
    "parallel",
    "remote",
    "require",
]
