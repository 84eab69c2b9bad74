"""The MPI launcher, for real, with MPICH and with Open MPI (Debian's packages: `mpiexec.mpich`,
`mpiexec.openmpi`; mpi4py from the pinned PyPI wheel in python/requirements.txt, which picks
the MPI library when it is imported). `parallax cluster start --engines mpi -n 4 --daemonize`
must:

- start one `mpiexec` whose ranks are the engines: engine i is rank i of 4 in `COMM_WORLD` of
  its kernel (`%px` in the parallax kernel prints `[stdout:i] rank i of 4`), an `allreduce` of
  the ids gives their sum, and the lecture's `parallel_dot` works;
- record the mpiexec in cluster.json and show the launcher and the engines per host in `cluster
  list`;
- refuse to scale (the Clusters page's PATCH answers 409 with the reason) and refuse
  --restart-engines;
- leave no rank, engine, kernel, mpiexec or hydra proxy after `cluster stop`, and none after
  its supervisor is killed and the stale cluster is stopped.

What each MPI needs here (see README "Clusters"):

- MPICH: Debian names its library libmpich.so.12, the mpi4py wheel loads libmpi.so.12: a folder
  with that link goes on LD_LIBRARY_PATH (given to the ranks with --env, on the command line).
- Open MPI: as root it needs --allow-run-as-root, and --oversubscribe for more ranks than this
  machine's 2 cores; with MPICH installed too, libmpi.so is MPICH's, so mpi4py is told
  MPI4PY_LIBMPI=libmpi.so.40 (all three in the profile's cluster.toml, under [mpi]).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from kernel_env import (
    PARALLAX_BIN,
    Cluster,
    IsolatedEnv,
    assert_no_processes_left,
    cluster_diagnostics,
    Driver,
    describe,
    process_tree,
    processes_using,
    start_cluster,
    start_kernel,
    stop_cluster,
    stop_kernel,
)

pytestmark = [
    pytest.mark.parallax_only,
    pytest.mark.xdist_group("mpi_launcher"),
    pytest.mark.timeout(90),
    pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="mpi4py is not installed"),
]

N = 4
PROFILE = "mpi"
MPICH_LIBRARY = Path("/usr/lib/x86_64-linux-gnu/libmpich.so.12")


@dataclass
class Mpi:
    name: str
    mpiexec: str
    # `cluster start` flags, and the profile's cluster.toml.
    flags: list[str]
    toml: str


def mpich(tmp: Path) -> Mpi:
    lib = tmp / "mpich-lib"
    lib.mkdir()
    (lib / "libmpi.so.12").symlink_to(MPICH_LIBRARY)
    return Mpi("mpich", "mpiexec.mpich", ["--mpiexec", "mpiexec.mpich", "--env", f"LD_LIBRARY_PATH={lib}"], "")


def openmpi(tmp: Path) -> Mpi:
    toml = (
        'engines = "mpi"\n'
        "[mpi]\n"
        'mpiexec = "mpiexec.openmpi"\n'
        'args = ["--allow-run-as-root", "--oversubscribe"]\n'
        'env = { MPI4PY_LIBMPI = "libmpi.so.40" }\n'
    )
    return Mpi("openmpi", "mpiexec.openmpi", [], toml)


@pytest.fixture(params=[mpich, openmpi], ids=["mpich", "openmpi"])
def mpi(request: pytest.FixtureRequest, isolated_env: IsolatedEnv) -> Mpi:
    made: Mpi = request.param(Path(isolated_env.root))
    if shutil.which(made.mpiexec) is None:
        pytest.skip(f"{made.mpiexec} not found (scripts/setup.sh installs Debian's mpich and openmpi-bin)")
    if made.name == "mpich" and not MPICH_LIBRARY.exists():
        pytest.skip(f"{MPICH_LIBRARY} not found")
    if made.toml:
        profile_dir = Path(isolated_env.vars["PARALLAX_DIR"]) / f"profile_{PROFILE}"
        profile_dir.mkdir(parents=True, exist_ok=True)
        (profile_dir / "cluster.toml").write_text(made.toml)
    return made


def start(isolated_env: IsolatedEnv, mpi: Mpi, n: int = N) -> Cluster:
    return start_cluster(isolated_env, profile=PROFILE, n=n, extra=["--engines", "mpi", *mpi.flags])


def our_mpi_processes(cluster: Cluster) -> dict[int, str]:
    """mpiexec and hydra proxies (or anything else MPI) started in the cluster's environment."""
    found = {}
    for pid in processes_using(cluster.parallax_dir):
        text = describe({pid})
        if "mpiexec" in text or "hydra" in text or "orted" in text:
            found[pid] = text
    return found


def px_output(code: str) -> str:
    """What the parallax kernel shows for a `%px` cell (streams and display texts, in order)."""
    km, kc = start_kernel()
    try:
        ex = Driver(kc).execute(code, timeout=60)
        assert ex.reply is not None and ex.reply["content"]["status"] == "ok", ex.summary()
        texts = []
        for m in ex.iopub:
            content = m.get("content", {})
            if m["msg_type"] == "stream":
                texts.append(content["text"])
            elif m["msg_type"] in ("display_data", "update_display_data"):
                texts.append(content.get("data", {}).get("text/plain", ""))
        return "".join(texts)
    finally:
        stop_kernel(km, kc)


def test_the_engines_are_the_ranks_of_one_mpiexec(
    isolated_env: IsolatedEnv, mpi: Mpi, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    import parallax

    t0 = time.monotonic()
    cluster = start(isolated_env, mpi)
    started_s = time.monotonic() - t0
    try:
        state = json.loads((cluster.profile_dir / "cluster.json").read_text())
        (group,) = state["engine_groups"]
        assert (group["program"], group["first"], group["count"]) == (mpi.mpiexec, 0, N), state
        assert state["engine_pids"] == [group["pid"]] * N, state
        assert state["launcher"] == "mpi"
        mpi_tree = process_tree(group["pid"])

        rc = parallax.Client(profile=PROFILE, timeout=20)
        try:
            assert sorted(rc.ids) == list(range(N))
            dview = rc[:]
            dview.block = True

            def world() -> tuple[int, int, int]:
                from mpi4py import MPI

                comm = MPI.COMM_WORLD
                return comm.Get_rank(), comm.Get_size(), comm.allreduce(comm.Get_rank())

            seen = dict(zip(dview.targets, dview.apply_sync(world)))
            total = sum(range(N))
            assert seen == {i: (i, N, total) for i in range(N)}, seen

            # The same as code run on each engine.
            dview.execute("from mpi4py import MPI; rank = MPI.COMM_WORLD.Get_rank()")
            assert dview.pull("rank") == list(dview.targets)

            # The lecture's distributed matrix product.
            dview.execute("import numpy")

            def parallel_dot(dview: Any, A: Any, B: Any) -> Any:
                dview.scatter("A", A)
                dview["B"] = B
                dview.execute("C = numpy.dot(A, B)")
                return dview.gather("C")

            A = np.random.random((10, 3))
            B = np.random.random((3, 5))
            assert np.allclose(parallel_dot(dview, A, B), np.dot(A, B))
        finally:
            rc.close()

        # What a notebook shows: %px in the parallax kernel, each engine printing its rank.
        monkeypatch.setenv("PARALLAX_PROFILE", PROFILE)
        cell = "%px from mpi4py import MPI; w = MPI.COMM_WORLD; print(f'rank {w.Get_rank()} of {w.Get_size()}')"
        shown = px_output(cell)
        for i in range(N):
            assert f"[stdout:{i}] rank {i} of {N}" in shown, shown

        listed = json.loads(subprocess.run(
            [str(PARALLAX_BIN), "cluster", "list", "--json"], env=cluster.env, capture_output=True, text=True,
            timeout=30, check=True,
        ).stdout)  # fmt: skip
        (ours,) = [c for c in listed if c["profile"] == PROFILE]
        assert (ours["launcher"], ours["engines"], sum(ours["hosts"].values())) == ("mpi", N, N), ours

        refused = scale_through_the_clusters_page(isolated_env, cluster, N + 1)
        assert refused.status_code == 409, refused.text
        reason = "an MPI cluster's size is fixed by its mpiexec: stop it and start it with -n N"
        assert reason in refused.json()["error"]
        assert json.loads((cluster.profile_dir / "cluster.json").read_text())["n"] == N
    except BaseException:
        print(cluster_diagnostics(cluster))
        raise
    finally:
        t1 = time.monotonic()
        stop_cluster(cluster)
        print(f"{mpi.name}: started in {started_s:.1f}s, stopped in {time.monotonic() - t1:.1f}s")
    left = {pid: describe({pid}) for pid in mpi_tree if os.path.exists(f"/proc/{pid}")}
    assert not left, f"left of mpiexec's tree: {left}"
    assert not our_mpi_processes(cluster)


def scale_through_the_clusters_page(isolated_env: IsolatedEnv, cluster: Cluster, n: int) -> requests.Response:
    """PATCH /api/clusters/PROFILE {"n": n} on a `parallax dashboard` of the same environment."""
    from conftest import DashboardServer

    server = DashboardServer(isolated_env)
    try:
        return requests.patch(
            f"{server.url}/api/clusters/{PROFILE}",
            headers={"Authorization": f"token {server.token}"},
            json={"n": n},
            timeout=60,
        )
    finally:
        server.process.terminate()
        server.process.wait(10)


def test_a_killed_supervisor_leaves_nothing_once_the_stale_cluster_is_stopped(
    isolated_env: IsolatedEnv, mpi: Mpi
) -> None:
    cluster = start(isolated_env, mpi, n=3)
    state = json.loads((cluster.profile_dir / "cluster.json").read_text())
    everything = process_tree(int(state["supervisor_pid"]))
    try:
        # supervisor, controller, mpiexec, 3 engines and their kernels (and MPICH's proxy)
        assert len(everything) >= 3 + 3 * 2, describe(everything)
        os.kill(int(state["supervisor_pid"]), signal.SIGKILL)
        stopped = subprocess.run(
            [str(PARALLAX_BIN), "cluster", "stop", "--profile", PROFILE], env=cluster.env, capture_output=True,
            text=True, timeout=30,
        )  # fmt: skip
        assert stopped.returncode == 0, stopped.stderr
    finally:
        assert_no_processes_left(cluster.parallax_dir, everything)
    assert not (cluster.profile_dir / "cluster.json").exists()


def test_restarting_engines_and_engines_outside_mpiexec_are_refused(isolated_env: IsolatedEnv) -> None:
    env = {**isolated_env.environ()}
    for name in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"):
        env.pop(name, None)
    proc = subprocess.run(
        [str(PARALLAX_BIN), "cluster", "start", "--profile", PROFILE, "--engines", "mpi", "-n", "2",
         "--restart-engines", "--daemonize"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "--restart-engines does not work with the mpi launcher" in proc.stderr, proc.stderr

    proc = subprocess.run(
        [str(PARALLAX_BIN), "engine", "--mpi"],
        env={**env, "PARALLAX_CONNECTION_INFO": "{}"}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "none of OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK is set" in proc.stderr, proc.stderr

    proc = subprocess.run(
        [str(PARALLAX_BIN), "cluster", "start", "--profile", PROFILE, "--engines", "mpi", "-n", "2",
         "--mpiexec", "/nonexistent/mpiexec", "--daemonize"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "cannot run /nonexistent/mpiexec --version" in proc.stderr, proc.stderr
    assert_no_processes_left(env["PARALLAX_DIR"])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
