"""The twistd plugin and tap: discovery, import-lightness, options, the open-file limit."""
import io
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from replayserver.tap import Options
from tests.support.server import REPO_ROOT, temporary_directory


def python(code: str) -> str:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", code], env=environment, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.strip()


class TapTests(SynchronousTestCase):
    def test_plugin_is_found_and_import_light(self):
        output = python(
            "import sys\n"
            "from twisted.plugin import getPlugins\n"
            "from twisted.application.service import IServiceMaker\n"
            "names = [p.tapname for p in getPlugins(IServiceMaker)]\n"
            "print(names.count('replayserver'), 'replayserver.service' in sys.modules,"
            " 'replayserver.config' in sys.modules)\n"
        )
        self.assertEqual(output, "1 False False")

    def test_options_load_the_configuration(self):
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["settings"].replay.delay, 300)
        path = os.path.join(temporary_directory(self), "c.yaml")
        with open(path, "w") as f:
            f.write("replay:\n  quorum: 0\n")
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        error = self.assertRaises(SystemExit, Options().parseOptions, ["--config", path])
        self.assertEqual(error.code, 1)
        [line] = stderr.getvalue().splitlines()  # one line, naming the key
        self.assertIn("configuration error: replay.quorum", line)

    def test_open_file_limit_is_raised_to_the_hard_limit(self):
        output = python(
            "import resource\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
            "from replayserver.listeners import raise_file_limit\n"
            "raise_file_limit()\n"
            "print(resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard))\n"
        )
        self.assertEqual(output, "True")
