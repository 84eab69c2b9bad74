"""The standard Jupyter kernel conformance suite (jupyter_kernel_test) against the kernel under test.

Every sample attribute jupyter_kernel_test 0.7 knows is filled in, so none of its tests is skipped for
a Python kernel; conftest.py fails the run if one is. (0.7 has no stdin test: input() is covered in
test_kernel_client.py.)
"""

from __future__ import annotations

from typing import Any, ClassVar

import jupyter_kernel_test
import pytest

from kernel_env import KERNEL_UNDER_TEST, IsolatedEnv, stop_kernel

# One worker runs a class's tests, so a class starts one kernel (with `pytest -n ... --dist loadgroup`).
pytestmark = [pytest.mark.timeout(120), pytest.mark.xdist_group("conformance")]


class IsolatedKernelMixin:
    """Runs the class's kernel inside an IsolatedEnv and checks its process tree is gone after."""

    _env: ClassVar[IsolatedEnv]
    km: Any
    kc: Any

    @classmethod
    def setUpClass(cls) -> None:
        cls._env = IsolatedEnv()
        cls._env.apply()
        try:
            super().setUpClass()  # type: ignore[misc]
        except BaseException:
            cls._env.cleanup()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            stop_kernel(cls.km, cls.kc)
        finally:
            cls._env.cleanup()


class TestKernelConformance(IsolatedKernelMixin, jupyter_kernel_test.KernelTests):
    kernel_name = KERNEL_UNDER_TEST
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"

    completion_samples: ClassVar[list[dict[str, Any]]] = [
        {"text": "zi", "matches": {"zip"}},
        {"text": "import itertoo", "matches": {"itertools"}},
    ]
    complete_code_samples: ClassVar[list[str]] = [
        "1",
        "print('hello, world')",
        "def f(x):\n  return x*2\n\n\n",
    ]
    incomplete_code_samples: ClassVar[list[str]] = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples: ClassVar[list[str]] = ["import = 7q", "x = )"]

    code_page_something = "zip?"
    code_generate_error = "raise ValueError('boom')"
    code_execute_result: ClassVar[list[dict[str, str]]] = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
        {
            "code": "from IPython.display import HTML; HTML('<b>x</b>')",
            "mime": "text/html",
            "result": "<b>x</b>",
        },
    ]
    code_display_data: ClassVar[list[dict[str, str]]] = [
        {
            "code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
            "mime": "text/html",
        },
        {
            "code": "from IPython.display import Math, display; display(Math(r'\\frac{1}{2}'))",
            "mime": "text/latex",
        },
    ]
    # Must match one of code_execute_result's codes (glob syntax, as IPython's history search uses).
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"


class TestIopubWelcome(IsolatedKernelMixin, jupyter_kernel_test.IopubWelcomeTests):
    """JEP 65: the kernel's iopub is an XPUB that greets each new subscriber with `iopub_welcome`."""

    kernel_name = KERNEL_UNDER_TEST
    support_iopub_welcome = True
