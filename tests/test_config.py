"""Configuration: defaults, the YAML file, environment overrides, and errors naming the key."""
import os
import re
from pathlib import Path

import yaml
from twisted.trial.unittest import SynchronousTestCase

import attrs

from replayserver.config import SECTIONS, ConfigError, keys, load_config
from tests.support.server import temporary_directory

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "etc" / "replayserver.yaml"


class ConfigTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = os.path.join(temporary_directory(self), "config.yaml")
        Path(path).write_text(text)
        return path

    def assertError(self, key: str, path: str | None = None, environ=None) -> ConfigError:
        error = self.assertRaises(ConfigError, load_config, path, environ or {})
        self.assertEqual(error.key, key)
        self.assertIn(key, str(error))
        return error

    def test_defaults(self):
        config = load_config(None, {})
        self.assertEqual(config.server.listen, "tcp:15000:backlog=1024:interface=127.0.0.1")
        self.assertIsNone(config.server.websocket_listen)
        self.assertIsNone(config.server.http_listen)
        self.assertEqual(config.server.header_timeout, 21600)
        replay = config.replay
        self.assertEqual(
            (replay.delay, replay.sample_interval, replay.grace_period, replay.forced_end,
             replay.quorum, replay.comparison_window, replay.stall_timeout),
            (300, 1, 30, 18000, 2, 4096, 60),
        )
        self.assertEqual(config.storage.vault, os.path.join(os.getcwd(), "replays"))
        self.assertEqual(config.storage.spool, os.path.join(os.getcwd(), "spool"))
        self.assertEqual(config.storage.compression_level, 10)
        self.assertIsNone(config.database)

    def test_yaml_values(self):
        path = self.write(
            "server:\n  listen: 'tcp:0:interface=127.0.0.1'\n"
            "replay:\n  delay: 2.5\n  quorum: 3\n"
            "storage:\n  vault: /tmp/somewhere\n  compression_level: 3\n"
        )
        config = load_config(path, {})
        self.assertEqual(config.server.listen, "tcp:0:interface=127.0.0.1")
        self.assertEqual(config.replay.delay, 2.5)
        self.assertEqual(config.replay.quorum, 3)
        self.assertEqual(config.replay.grace_period, 30)  # untouched keys keep defaults
        self.assertEqual(config.storage.vault, "/tmp/somewhere")
        self.assertEqual(config.storage.compression_level, 3)

    def test_empty_file_and_null_sections_give_defaults(self):
        self.assertEqual(load_config(self.write(""), {}).replay.delay, 300)
        self.assertEqual(load_config(self.write("replay:\n"), {}).replay.delay, 300)

    def test_environment_overrides_file(self):
        path = self.write("replay:\n  delay: 10\n")
        environ = {
            "REPLAYSERVER_REPLAY_DELAY": "5",
            "REPLAYSERVER_REPLAY_SAMPLE_INTERVAL": "0.25",
            "REPLAYSERVER_SERVER_HEADER_TIMEOUT": "60",
            "REPLAYSERVER_STORAGE_VAULT": "123",  # a string key keeps the text
            "REPLAYSERVER_SERVER_HTTP_LISTEN": "null",
            "REPLAYSERVER_SAMPLES": "/not/a/setting",  # other REPLAYSERVER_ variables ignored
            "PATH": "/usr/bin",
        }
        config = load_config(path, environ)
        self.assertEqual(config.replay.delay, 5)
        self.assertEqual(config.replay.sample_interval, 0.25)
        self.assertEqual(config.server.header_timeout, 60)
        self.assertEqual(config.storage.vault, os.path.join(os.getcwd(), "123"))
        self.assertIsNone(config.server.http_listen)

    def test_environment_without_file(self):
        config = load_config(None, {"REPLAYSERVER_STORAGE_COMPRESSION_LEVEL": "22"})
        self.assertEqual(config.storage.compression_level, 22)

    def test_unknown_key(self):
        self.assertError("replay.delai", self.write("replay:\n  delai: 3\n"))

    def test_unknown_section(self):
        self.assertError("replays", self.write("replays:\n  delay: 3\n"))

    def test_unknown_environment_key(self):
        self.assertError("REPLAYSERVER_REPLAY_DELAI", environ={"REPLAYSERVER_REPLAY_DELAI": "3"})

    def test_wrong_types(self):
        cases = {
            "replay.delay": "replay:\n  delay: soon\n",
            "replay.quorum": "replay:\n  quorum: 2.5\n",
            "replay.comparison_window": "replay:\n  comparison_window: true\n",
            "storage.compression_level": "storage:\n  compression_level: '10'\n",
            "server.listen": "server:\n  listen: 15000\n",
            "storage.vault": "storage:\n  vault: null\n",
        }
        for key, text in cases.items():
            with self.subTest(key=key):
                self.assertError(key, self.write(text))

    def test_wrong_type_from_environment(self):
        error = self.assertError("replay.delay", environ={"REPLAYSERVER_REPLAY_DELAY": "later"})
        self.assertIn("number", error.message)

    def test_impossible_values(self):
        cases = {
            "replay.delay": "replay:\n  delay: -1\n",
            "replay.sample_interval": "replay:\n  sample_interval: 0\n",
            "replay.grace_period": "replay:\n  grace_period: -0.5\n",
            "replay.forced_end": "replay:\n  forced_end: 0\n",
            "replay.quorum": "replay:\n  quorum: 0\n",
            "replay.comparison_window": "replay:\n  comparison_window: 0\n",
            "replay.stall_timeout": "replay:\n  stall_timeout: -3\n",
            "server.header_timeout": "server:\n  header_timeout: 0\n",
            "storage.compression_level": "storage:\n  compression_level: 23\n",
            "server.listen": "server:\n  listen: 'tcp:notaport'\n",
            "server.websocket_listen": "server:\n  websocket_listen: 'nosuchkind:1'\n",
            "storage.spool": "storage:\n  spool: ''\n",
        }
        for key, text in cases.items():
            with self.subTest(key=key):
                self.assertError(key, self.write(text))
        self.assertError(
            "storage.compression_level", environ={"REPLAYSERVER_STORAGE_COMPRESSION_LEVEL": "0"}
        )

    def test_bad_files(self):
        missing = os.path.join(temporary_directory(self), "nothing.yaml")
        self.assertError(missing, missing)
        broken = self.write("replay: [unclosed\n")
        self.assertError(broken, broken)
        scalar = self.write("just a string\n")
        self.assertError(scalar, scalar)
        self.assertError("replay", self.write("replay: 5\n"))

    def test_example_file_documents_every_key(self):
        """etc/replayserver.yaml loads, shows every key with its default, with comments."""
        text = EXAMPLE.read_text()
        data = yaml.safe_load(text)
        self.assertEqual(set(data), set(SECTIONS))
        for name, (section, optional) in SECTIONS.items():
            if data[name] is None and optional:
                # an optional section off by default is documented commented out
                lines = text.splitlines()
                block = []
                for line in lines[lines.index(f"#{name}:"):]:
                    if not line.startswith("#"):
                        break
                    block.append(line[1:])
                given = yaml.safe_load("\n".join(block))[name]
            else:
                given = data[name] or {}
            self.assertEqual(set(given), {key.name for key in keys(section)}, name)
            for key in keys(section):
                self.assertEqual(given[key.name], key.default, f"{name}.{key.name}")
                self.assertRegex(text, rf"#[^\n]*\n(#?  #[^\n]*\n)*#?  {re.escape(key.name)}:")
        config = load_config(str(EXAMPLE), {})
        self.assertEqual(attrs.asdict(config.replay), attrs.asdict(load_config(None, {}).replay))


class EnvironmentTextTests(SynchronousTestCase):
    """A string key takes the environment's text exactly: no YAML, no comments, no quotes."""

    def test_password_with_shell_and_yaml_characters_is_taken_as_it_is(self):
        for password in ("p#ss word", "a: b", "'quoted'", '"double"', "#", " lead", "null",
                         "[1, 2]", "{x: 1}", "~", "yes", "0x10"):
            with self.subTest(password=password):
                config = load_config(None, {"REPLAYSERVER_DATABASE_PASSWORD": password})
                self.assertEqual(config.database.password, password)

    def test_nullable_strings_read_null_and_numbers_read_yaml(self):
        config = load_config(None, {"REPLAYSERVER_BUGSNAG_API_KEY": "null",
                                    "REPLAYSERVER_SERVER_WORKERS": "3",
                                    "REPLAYSERVER_ADMISSION_REQUIRE_LIVE_GAME": "false"})
        self.assertIsNone(config.bugsnag.api_key)
        self.assertEqual(config.server.workers, 3)
        self.assertIs(config.admission.require_live_game, False)

    def test_live_game_admission_follows_the_database_section(self):
        self.assertFalse(load_config(None, {}).requires_live_game)
        with_database = load_config(None, {"REPLAYSERVER_DATABASE_NAME": "faf"})
        self.assertTrue(with_database.requires_live_game)
        turned_off = load_config(None, {"REPLAYSERVER_DATABASE_NAME": "faf",
                                        "REPLAYSERVER_ADMISSION_REQUIRE_LIVE_GAME": "false"})
        self.assertFalse(turned_off.requires_live_game)
        error = self.assertRaises(ConfigError, load_config, None,
                                  {"REPLAYSERVER_ADMISSION_REQUIRE_LIVE_GAME": "true"})
        self.assertEqual(error.key, "admission.require_live_game")
