"""pytest hooks shared by the test suite."""
import shutil
import tempfile

from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from tests.support import mariadb

# Hypothesis keeps its caches and example database outside the work tree (not in
# .hypothesis/), so that a test run leaves the tree as it was.
HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="replayserver-hypothesis-")
set_hypothesis_home_dir(HYPOTHESIS_HOME)
settings.register_profile("replayserver", database=None)
settings.load_profile("replayserver")


def pytest_sessionfinish(session, exitstatus):
    """Drop the test database and stop the throwaway MariaDB server, if the session made them;
    remove Hypothesis's directory."""
    mariadb.shutdown()
    shutil.rmtree(HYPOTHESIS_HOME, ignore_errors=True)
