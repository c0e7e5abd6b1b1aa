"""The type checker, strict, on the whole package (configuration: setup.cfg ``[mypy]``)."""
from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.support.server import REPO_ROOT


class TypeCheckTests(SynchronousTestCase):
    def test_the_package_type_checks_strictly(self) -> None:
        mypy = os.path.join(os.path.dirname(sys.executable), "mypy")
        result = subprocess.run([mypy, "--no-incremental", "--cache-dir=/dev/null"],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
