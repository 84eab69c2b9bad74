"""Task dependencies for load-balanced views, as ipyparallel's `Dependency`.

`lview.set_flags(after=ar)` runs the view's next tasks only once the tasks of `ar` are done;
`follow=ar` runs them on the engine where those tasks ran. Either flag takes an AsyncResult, a
msg_id, a list of those, or a `Dependency`, which also says whether `all` the tasks (else any one)
must be done, and whether they count when they succeeded (`success`), failed (`failure`) or
either. The controller holds a dependent task until its dependencies are met; one that can never
be met fails with `ImpossibleDependency`, one that names unknown tasks with `InvalidDependency`,
and one whose view `timeout` passes first with `TaskTimeout`.
"""

from __future__ import annotations

from typing import Any, Iterable

from .asyncresult import AsyncResult


class Dependency(set):
    """A set of msg_ids that a task depends on, with how they count (see the module doc)."""

    def __init__(self, dependencies: Any = (), all: bool = True, success: bool = True, failure: bool = False) -> None:
        if isinstance(dependencies, dict):
            all = dependencies.get("all", all)
            success = dependencies.get("success", success)
            failure = dependencies.get("failure", failure)
            dependencies = dependencies.get("dependencies", ())
        super().__init__(_msg_ids(dependencies))
        if not (success or failure):
            raise ValueError("Must depend on at least one of successes or failures!")
        self.all = bool(all)
        self.success = bool(success)
        self.failure = bool(failure)

    def check(self, completed: set[str], failed: set[str] | None = None) -> bool:
        """Whether the dependency is met, given the msg_ids that completed and failed."""
        if not self:
            return True
        against: set[str] = set(completed) if self.success else set()
        if failed is not None and self.failure:
            against |= failed
        return self.issubset(against) if self.all else not self.isdisjoint(against)

    def unreachable(self, completed: set[str], failed: set[str] | None = None) -> bool:
        """Whether the dependency can no longer be met."""
        if not self:
            return False
        against: set[str] = set()
        if not self.success:
            against |= completed
        if failed is not None and not self.failure:
            against |= failed
        return not self.isdisjoint(against) if self.all else self.issubset(against)

    def as_dict(self) -> dict[str, Any]:
        """The dependency as the controller reads it (JSON)."""
        return {"dependencies": sorted(self), "all": self.all, "success": self.success, "failure": self.failure}

    def __repr__(self) -> str:
        return (f"Dependency({sorted(self)!r}, all={self.all}, success={self.success}, "
                f"failure={self.failure})")


def _msg_ids(dependencies: Any) -> list[str]:
    if isinstance(dependencies, (str, AsyncResult)):
        dependencies = [dependencies]
    ids: list[str] = []
    for dependency in _iterate(dependencies):
        if isinstance(dependency, str):
            ids.append(dependency)
        elif isinstance(dependency, AsyncResult):
            ids.extend(dependency.msg_ids)
        else:
            raise TypeError(f"invalid dependency type: {type(dependency)!r}")
    return ids


def _iterate(dependencies: Any) -> Iterable[Any]:
    try:
        return iter(dependencies)
    except TypeError:
        raise TypeError(f"invalid dependency type: {type(dependencies)!r}") from None


def render(dependency: Any) -> dict[str, Any] | None:
    """A view's `after` / `follow` flag as request metadata (None: no dependency). Raises
    ValueError for anything but None, a msg_id, an AsyncResult, a Dependency or a collection of
    msg_ids and AsyncResults."""
    if dependency is None:
        return None
    try:
        if not isinstance(dependency, Dependency):
            dependency = Dependency(dependency)
    except TypeError:
        raise ValueError(f"Invalid dependency: {dependency!r}") from None
    return dependency.as_dict() if dependency else None


__all__ = ["Dependency"]
