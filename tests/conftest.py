"""pytest hooks shared by the test suite."""

from tests.support import mariadb


def pytest_sessionfinish(session, exitstatus):
    """Drop the test database and stop the throwaway MariaDB server, if the session made them."""
    mariadb.shutdown()
