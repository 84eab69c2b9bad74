"""The controller's task database, as the Client presents it (ipyparallel's API): results of
earlier tasks (`get_result`, also of tasks sent by other clients, as `AsyncHubResult`), queries
(`db_query`, `hub_history`) and purging (`purge_results`). A mixin of `Client`, kept apart because
it is a subject of its own: everything here is a request to the controller about stored records.
"""

from __future__ import annotations

import datetime
from typing import Any

from . import error
from ._wire import parse_date
from .asyncresult import AsyncHubResult, AsyncResult, Task



def _dates_as_text(value: Any) -> Any:
    """`value` with its datetimes as the task database writes them (UTC, `...T...Z`, microseconds),
    so that `{'submitted': {'$lt': datetime}}` compares what the database holds. A naive datetime
    is local time, as Python's own are."""
    if isinstance(value, datetime.datetime):
        utc = value.astimezone(datetime.timezone.utc)
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, dict):
        return {key: _dates_as_text(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_dates_as_text(item) for item in value]
    return value

class TaskDatabase:
    """Client methods about stored tasks. They use the Client's `_request`, its task tables
    (`_pending`, `_tasks`, `outstanding`) and its job and target parsing."""

    block: bool
    outstanding: set[str]
    history: list[str]
    _pending: dict[str, Task]
    _tasks: Any
    _request: Any
    _msg_ids_from_jobs: Any
    _build_targets: Any

    def get_result(self, indices_or_msg_ids: Any = None, block: bool | None = None, owner: bool = True) -> AsyncResult:
        """An AsyncResult for earlier requests (msg_ids, history indices or AsyncResults). Tasks
        this client does not hold (sent by another client, or before this one existed) are
        fetched from the controller's task database as an AsyncHubResult; one the database does
        not know fails when its result is asked for, with the controller's KeyError."""
        block = self.block if block is None else block
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        single = not isinstance(indices_or_msg_ids, (list, tuple, set))
        msg_ids = self._msg_ids_from_jobs(indices_or_msg_ids)
        tasks: list[Task] = []
        from_hub = False
        for msg_id in msg_ids:
            task = self._pending.get(msg_id) or self._tasks.get(msg_id)
            if task is None:
                task = self._fetch_task(msg_id)
                from_hub = True
            tasks.append(task)
        cls = AsyncHubResult if from_hub else AsyncResult
        ar = cls(self, tasks[0] if single else tasks)
        if block:
            ar.wait()
        return ar

    def _fetch_task(self, msg_id: str) -> Task:
        """A Task for a msg_id from the controller's database (complete if the task is). It is
        not kept in this client's tables: asking again asks the database again, as ipyparallel
        does."""
        task = Task(msg_id, "apply")
        self._refresh_from_hub([task])
        return task

    def _refresh_from_hub(self, tasks: list[Task]) -> None:
        """Ask the controller for the records of unfinished hub tasks; complete the finished."""
        for task in tasks:
            try:
                reply = self._request("task_request", {"msg_id": task.msg_id}, what="task")
            except error.RemoteError as exc:  # e.g. KeyError: unknown or purged
                content = {"status": "error", "ename": exc.ename, "evalue": exc.evalue, "traceback": []}
                task.complete(content, {}, None, [])
                continue
            self._apply_record(task, reply.content.get("task") or {}, reply.buffers)

    def _apply_record(self, task: Task, record: dict[str, Any], buffers: list[Any]) -> None:
        """Fill a task from a TaskRecord; completes it if the record is finished."""
        md = task.metadata
        if str(record.get("msg_type", "")).startswith("execute"):
            task.kind = "execute"
        if record.get("engine") is not None:
            md["engine_id"] = record["engine"]
        md["stdout"] = record.get("stdout") or ""
        md["stderr"] = record.get("stderr") or ""
        if record.get("submitted"):
            md["submitted"] = record["submitted"]
        if record.get("result") is not None:
            md["execute_result"] = {"data": record["result"], "metadata": {}}
        status = record.get("status", "pending")
        if status == "pending":
            return
        content: dict[str, Any] = {"status": status}
        if record.get("error"):
            content.update(record["error"])
        if status == "ok" and task.kind == "apply" and not buffers:
            content = {"status": "error", "ename": "ValueError", "traceback": [],
                       "evalue": f"the controller did not keep the result of task {task.msg_id} (only its record)"}
        metadata = {"engine_id": record.get("engine"), "started": record.get("started"), "completed": record.get("completed")}
        task.complete(content, metadata, record.get("completed"), list(buffers))
        if record.get("received"):
            md["received"] = record["received"]

    def result_status(self, msg_ids: Any, status_only: bool = True) -> dict[str, Any]:
        """{'pending': [...], 'completed': [...]} for msg_ids (with the results keyed by msg_id
        when status_only is False)."""
        out: dict[str, Any] = {"pending": [], "completed": []}
        for msg_id in self._msg_ids_from_jobs(msg_ids):
            ar = self.get_result(msg_id, block=False)
            if ar.ready():
                out["completed"].append(msg_id)
                if not status_only:
                    out[msg_id] = ar.get(return_exceptions=True)
            else:
                out["pending"].append(msg_id)
        return out

    def db_query(self, query: dict[str, Any], keys: list[str] | str | None = None) -> list[dict[str, Any]]:
        """Task records matching a mongo-style `query` (equality, $in, $nin, $ne, $lt, $gt, $le,
        $ge on msg_id, engine, client, status, msg_type, submitted, completed); `keys` limits the
        fields returned (msg_id is always included). Dates come back as datetimes."""
        if isinstance(keys, str):
            keys = [keys]
        reply = self._request("query_request", {"query": _dates_as_text(query), "keys": keys}, what="query")
        records = list(reply.content.get("records") or [])
        for record in records:
            for key in ("submitted", "started", "completed", "received"):
                if key in record:
                    record[key] = parse_date(record[key])
        return records

    def hub_history(self) -> list[str]:
        """The msg_ids of every task in the controller's database, by submission time."""
        records = self.db_query({}, keys=["msg_id", "submitted"])
        records.sort(key=lambda r: (r.get("submitted") is None, str(r.get("submitted"))))
        return [r["msg_id"] for r in records]

    def purge_local_results(self, jobs: Any = (), targets: Any = ()) -> None:
        """Forget finished results held by this client ('all', or by job / engine)."""
        if not jobs and not targets:
            raise ValueError("Must specify at least one of `targets` and `jobs`")
        if jobs == "all":
            if self.outstanding:
                raise RuntimeError(f"Can't purge outstanding tasks: {self.outstanding}")
            for msg_id in [m for m, t in list(self._tasks.items()) if t.done]:
                self._tasks.pop(msg_id, None)
            return
        msg_ids = set(self._msg_ids_from_jobs(jobs)) if jobs else set()
        if targets:
            engine_ids = set(self._build_targets(targets))
            msg_ids |= {m for m, t in list(self._tasks.items()) if t.metadata["engine_id"] in engine_ids}
        still = self.outstanding & msg_ids
        if still:
            raise RuntimeError(f"Can't purge outstanding tasks: {still}")
        for msg_id in msg_ids:
            self._tasks.pop(msg_id, None)

    def purge_hub_results(self, jobs: Any = (), targets: Any = ()) -> int:
        """Make the controller forget finished tasks ('all', or by job / engine); returns how many."""
        if not jobs and not targets:
            raise ValueError("Must specify at least one of `targets` and `jobs`")
        if jobs == "all":
            content: dict[str, Any] = {"all": True}
        else:
            msg_ids = self._msg_ids_from_jobs(jobs) if jobs else []
            if targets:
                engine_ids = self._build_targets(targets)
                records = self.db_query({"engine": {"$in": engine_ids}}, keys=["msg_id"])
                msg_ids += [r["msg_id"] for r in records]
            content = {"msg_ids": msg_ids}
        reply = self._request("purge_request", content, what="purge")
        return int(reply.content.get("purged", 0))

    def purge_results(self, jobs: Any = (), targets: Any = ()) -> None:
        """Forget finished results here and in the controller's database."""
        self.purge_local_results(jobs=jobs, targets=targets)
        self.purge_hub_results(jobs=jobs, targets=targets)

    def purge_everything(self) -> None:
        self.purge_results("all")
        self.history = []


__all__ = ["TaskDatabase"]
