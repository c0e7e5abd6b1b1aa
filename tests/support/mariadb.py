"""MariaDB for the tests: a server, one uniquely named database per test session holding FAF's
tables (REFERENCE 8), and the fixture games written as code.

The server is the one named by REPLAYSERVER_TEST_DB, a URL `mysql://USER[:PASSWORD]@HOST[:PORT][/]`
(port 3306 by default; any path is ignored, the tests create and drop their own database), e.g.
`mysql://root:@127.0.0.1:3306/`. Without it, a throwaway server is started once per session on
first use (mariadb-install-db + mariadbd in a temporary directory, on a free port of 127.0.0.1)
and stopped by shutdown(), which tests/conftest.py calls when the session ends.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import types
from urllib.parse import unquote, urlsplit

import attrs
import pymysql

ENVIRONMENT_VARIABLE = "REPLAYSERVER_TEST_DB"
START_TIMEOUT = 60.0


@attrs.frozen
class ServerAddress:
    host: str
    port: int
    user: str
    password: str

    def connect(self, database: str | None = None) -> pymysql.connections.Connection:
        """An autocommit connection for test setup and checks."""
        return pymysql.connect(
            host=self.host, port=self.port, user=self.user, password=self.password,
            database=database, charset="utf8mb4", autocommit=True,
        )


def parse_url(url: str) -> ServerAddress:
    """`mysql://USER[:PASSWORD]@HOST[:PORT][/]` -> ServerAddress."""
    parts = urlsplit(url)
    if parts.scheme != "mysql" or not parts.hostname:
        raise ValueError(f"{ENVIRONMENT_VARIABLE} must look like mysql://root:@127.0.0.1:3306/")
    return ServerAddress(
        host=parts.hostname,
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
    )


class ThrowawayServer:
    """mariadbd on a fresh data directory, listening on 127.0.0.1 only."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="replayserver-mariadb-")
        self.port = _free_port()
        self.address = ServerAddress("127.0.0.1", self.port, "root", "")
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        data = os.path.join(self.directory, "data")
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run(
            [_program("mariadb-install-db"), "--no-defaults", f"--datadir={data}",
             "--auth-root-authentication-method=normal", "--skip-test-db", *as_root],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self._process = subprocess.Popen(
            [_program("mariadbd"), "--no-defaults", f"--datadir={data}", *as_root,
             "--bind-address=127.0.0.1", f"--port={self.port}",
             f"--socket={os.path.join(self.directory, 'mysqld.sock')}",
             f"--pid-file={os.path.join(self.directory, 'mysqld.pid')}",
             f"--log-error={os.path.join(self.directory, 'error.log')}",
             "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=32M",
             "--innodb-flush-log-at-trx-commit=0", "--character-set-server=utf8mb4",
             "--collation-server=utf8mb4_unicode_ci"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"mariadbd exited; see {self.directory}/error.log")
            try:
                self.address.connect().close()
                return
            except pymysql.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        shutil.rmtree(self.directory, ignore_errors=True)


def _program(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError(f"{name} not found: install mariadb-server or set {ENVIRONMENT_VARIABLE}")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the schema (FAF's column types, for the columns the server uses) -------------------------
SCHEMA = [
    """CREATE TABLE login (
        id MEDIUMINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        login VARCHAR(20) NOT NULL UNIQUE,
        password CHAR(77) NOT NULL,
        email VARCHAR(254) NOT NULL UNIQUE
    )""",
    """CREATE TABLE game_featuredMods (
        id TINYINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        gamemod VARCHAR(50) NULL UNIQUE,
        name VARCHAR(255) NOT NULL,
        description TEXT NULL,
        publish TINYINT(1) NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE map (
        id MEDIUMINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        display_name VARCHAR(100) NOT NULL UNIQUE,
        map_type VARCHAR(15) NOT NULL,
        battle_type VARCHAR(15) NOT NULL
    )""",
    """CREATE TABLE map_version (
        id MEDIUMINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        description LONGTEXT NULL,
        max_players DECIMAL(2,0) NOT NULL,
        width DECIMAL(4,0) NOT NULL,
        height DECIMAL(4,0) NOT NULL,
        version DECIMAL(4,0) NOT NULL,
        folder_name VARCHAR(200) NOT NULL,
        filename VARCHAR(200) AS (CONCAT('maps/', folder_name, '.zip')) VIRTUAL,
        ranked TINYINT(1) NOT NULL DEFAULT 1,
        hidden TINYINT(1) NOT NULL DEFAULT 0,
        map_id MEDIUMINT UNSIGNED NOT NULL,
        FOREIGN KEY (map_id) REFERENCES map (id)
    )""",
    """CREATE TABLE game_stats (
        id INT UNSIGNED NOT NULL PRIMARY KEY,
        startTime TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        endTime TIMESTAMP NULL DEFAULT NULL,
        gameType ENUM('DEMORALIZATION','DOMINATION','ERADICATION','SANDBOX','DECAPITATION')
            NOT NULL,
        gameMod TINYINT UNSIGNED NOT NULL,
        host MEDIUMINT UNSIGNED NOT NULL,
        mapId MEDIUMINT UNSIGNED NULL,
        gameName VARCHAR(128) NOT NULL,
        validity TINYINT UNSIGNED NOT NULL,
        replay_ticks INT UNSIGNED NULL,
        replay_available TINYINT(1) NOT NULL DEFAULT 0,
        FOREIGN KEY (gameMod) REFERENCES game_featuredMods (id),
        FOREIGN KEY (host) REFERENCES login (id),
        FOREIGN KEY (mapId) REFERENCES map_version (id)
    )""",
    """CREATE TABLE game_player_stats (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        gameId INT UNSIGNED NOT NULL,
        playerId MEDIUMINT UNSIGNED NOT NULL,
        AI TINYINT(1) NOT NULL,
        faction TINYINT UNSIGNED NOT NULL,
        color TINYINT UNSIGNED NOT NULL,
        team TINYINT NOT NULL,
        place TINYINT UNSIGNED NOT NULL,
        mean FLOAT UNSIGNED NULL,
        deviation FLOAT UNSIGNED NULL,
        score TINYINT NULL,
        scoreTime TIMESTAMP NULL,
        result ENUM('VICTORY','DEFEAT','DRAW','MUTUAL_DRAW','UNKNOWN','CONFLICTING') NULL,
        FOREIGN KEY (gameId) REFERENCES game_stats (id),
        FOREIGN KEY (playerId) REFERENCES login (id)
    )""",
]


def update_tables(mod: str) -> list[str]:
    """The DDL of updates_<mod> and updates_<mod>_files."""
    return [
        f"""CREATE TABLE `updates_{mod}` (
            id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            filename VARCHAR(255) NOT NULL,
            path VARCHAR(255) NOT NULL
        )""",
        f"""CREATE TABLE `updates_{mod}_files` (
            id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            fileId INT UNSIGNED NOT NULL,
            version INT UNSIGNED NOT NULL,
            name VARCHAR(255) NOT NULL,
            md5 VARCHAR(45) NOT NULL,
            obselete TINYINT(1) NOT NULL DEFAULT 0,
            FOREIGN KEY (fileId) REFERENCES `updates_{mod}` (id)
        )""",
    ]


# --- fixtures ----------------------------------------------------------------------------------
@attrs.frozen
class Mod:
    id: int
    gamemod: str | None
    # (fileId, filename, versions of that file); the update tables exist iff this is not None
    files: tuple[tuple[int, str, tuple[int, ...]], ...] | None = None


@attrs.frozen
class Player:
    login: str
    team: int
    ai: bool = False


@attrs.frozen
class Game:
    game_id: int
    mod: Mod
    host: str
    title: str
    game_type: str
    start: int                    # unix seconds
    end: int | None
    map_folder: str | None        # map_version.folder_name, None for a NULL mapId
    players: tuple[Player, ...]
    replay_available: bool = False


FAF = Mod(0, "faf", files=(
    (41, "ForgedAlliance.exe", (3656, 3659)),
    (42, "init_faf.lua", (3659, 3601, 3650)),
    (43, "faf.nx2", (3656,)),
))
LADDER = Mod(6, "ladder1v1")                 # no update tables
NAMELESS = Mod(25, None)                     # game_featuredMods.gamemod NULL
UNSAFE = Mod(26, "x`; DROP TABLE login; --")  # must never reach a table name
MODS = (FAF, LADDER, NAMELESS, UNSAFE)

AI_LOGIN = "AI"
BASE_TIME = 1_262_476_800                    # 2010-01-03 00:00:00 UTC

GAMES = (
    Game(2000, FAF, "user1", "2v2 with teams", "DEMORALIZATION", BASE_TIME, BASE_TIME + 3600,
         "scmp_001", (Player("user1", 2), Player("Zoë", 2), Player("user3", 3),
                      Player("玩家四", 3))),
    Game(2001, LADDER, "user3", "Versus the AIs", "DOMINATION", BASE_TIME + 10, BASE_TIME + 700,
         "canis 4v4 spezial edition.v0002",
         (Player("user3", 1), Player(AI_LOGIN, 2, ai=True), Player(AI_LOGIN, 3, ai=True))),
    Game(2002, FAF, "Zoë", "Still running: endTime NULL", "ERADICATION", BASE_TIME + 20, None,
         "scmp_009", (Player("Zoë", 1), Player("user1", 1))),
    Game(2003, FAF, "user1", "Generated map: mapId NULL", "DEMORALIZATION", BASE_TIME + 30,
         BASE_TIME + 90, None, (Player("user1", 1),)),
    Game(2004, NAMELESS, "玩家四", "gamemod NULL ✓ 🙂", "SANDBOX", BASE_TIME + 40, BASE_TIME + 50,
         "scmp_001", (Player("玩家四", 1),)),
    Game(2005, UNSAFE, "user1", "A mod name that is no table name", "DECAPITATION",
         BASE_TIME + 50, BASE_TIME + 60, "scmp_001", (Player("user1", 1),)),
    Game(3_000_000_001, FAF, "user3", "An id above 2^31", "DEMORALIZATION", BASE_TIME + 60,
         BASE_TIME + 120, "scmp_009", (Player("user3", 2), Player("user1", 3))),
)

def expected_metadata(game: Game, save_time: float) -> dict:
    """The metadata REFERENCE 7 gives for `game`, computed from the fixture itself (`save_time`
    stands in for a NULL endTime)."""
    teams: dict[str, list[str]] = {}
    for player in game.players:
        if not player.ai:
            teams.setdefault(str(player.team), []).append(player.login)
    return {
        "uid": game.game_id,
        "complete": True,
        "state": "PLAYING",
        "featured_mod": game.mod.gamemod,
        "featured_mod_versions": {
            str(file_id): max(versions) for file_id, _, versions in game.mod.files or ()
        },
        "game_type": game.game_type,
        "host": game.host,
        "recorder": game.host,
        "launched_at": game.start,
        "game_end": int(save_time) if game.end is None else game.end,
        "title": game.title,
        "mapname": "None" if game.map_folder is None else game.map_folder,
        "num_players": len(game.players),
        "teams": teams,
    }


_LOGINS = ("user1", "Zoë", "user3", "玩家四", AI_LOGIN)


def insert_game(connection: pymysql.connections.Connection, game: Game) -> None:
    """Insert the game_stats row and the game_player_stats rows of `game`."""
    with connection.cursor() as cursor:
        map_id = None
        if game.map_folder is not None:
            cursor.execute("SELECT id FROM map_version WHERE folder_name = %s", (game.map_folder,))
            (map_id,) = cursor.fetchone()
        cursor.execute(
            "INSERT INTO game_stats (id, startTime, endTime, gameType, gameMod, host, mapId,"
            " gameName, validity, replay_available) VALUES (%s, FROM_UNIXTIME(%s),"
            " FROM_UNIXTIME(%s), %s, %s, (SELECT id FROM login WHERE login = %s), %s, %s, 0, %s)",
            (game.game_id, game.start, game.end, game.game_type, game.mod.id, game.host, map_id,
             game.title, int(game.replay_available)),
        )
        for place, player in enumerate(game.players, start=1):
            cursor.execute(
                "INSERT INTO game_player_stats (gameId, playerId, AI, faction, color, team, place)"
                " VALUES (%s, (SELECT id FROM login WHERE login = %s), %s, 1, %s, %s, %s)",
                (game.game_id, player.login, int(player.ai), place, player.team, place),
            )


def _fill(connection: pymysql.connections.Connection) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION time_zone = '+00:00'")
        # FAF's featured mod `faf` has id 0 in an AUTO_INCREMENT column.
        cursor.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_AUTO_VALUE_ON_ZERO')")
        for statement in SCHEMA:
            cursor.execute(statement)
        for number, login in enumerate(_LOGINS):
            cursor.execute(
                "INSERT INTO login (login, password, email) VALUES (%s, '', %s)",
                (login, f"player{number}@example.invalid"),
            )
        for mod in MODS:
            cursor.execute(
                "INSERT INTO game_featuredMods (id, gamemod, name) VALUES (%s, %s, %s)",
                (mod.id, mod.gamemod, f"mod {mod.id}"),
            )
            if mod.files is None:
                continue
            for statement in update_tables(mod.gamemod):
                cursor.execute(statement)
            for file_id, filename, versions in mod.files:
                cursor.execute(
                    f"INSERT INTO `updates_{mod.gamemod}` (id, filename, path)"
                    " VALUES (%s, %s, 'bin')", (file_id, filename),
                )
                for version in versions:
                    cursor.execute(
                        f"INSERT INTO `updates_{mod.gamemod}_files` (fileId, version, name, md5)"
                        " VALUES (%s, %s, %s, '')", (file_id, version, f"{filename}.{version}"),
                    )
        cursor.execute(
            "INSERT INTO map (display_name, map_type, battle_type) VALUES ('maps', 'skirmish', 'FFA')"
        )
        for folder in {game.map_folder for game in GAMES} - {None}:
            cursor.execute(
                "INSERT INTO map_version (max_players, width, height, version, folder_name, map_id)"
                " VALUES (8, 512, 512, 1, %s, (SELECT MIN(id) FROM map))", (folder,),
            )
    for game in GAMES:
        insert_game(connection, game)


class TestDatabase:
    """A database with a unique name on the test server, FAF's tables and the fixture games."""

    def __init__(self, address: ServerAddress) -> None:
        self.address = address
        self.name = f"replayserver_test_{os.getpid()}_{secrets.token_hex(4)}"
        self._users: list[str] = []
        with address.connect() as connection, connection.cursor() as cursor:
            cursor.execute(
                f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
        with self.connect() as connection:
            _fill(connection)

    def connect(self) -> pymysql.connections.Connection:
        """An autocommit connection to this database."""
        connection = self.address.connect(self.name)
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION time_zone = '+00:00'")
        return connection

    def settings(self, *, host: str | None = None, port: int | None = None,
                 pool_size: int = 2, user: str | None = None,
                 password: str | None = None) -> types.SimpleNamespace:
        """A `database` configuration section for this database (optionally through a proxy,
        or as another user)."""
        return types.SimpleNamespace(
            host=host or self.address.host, port=port or self.address.port,
            user=self.address.user if user is None else user,
            password=self.address.password if password is None else password,
            name=self.name, pool_size=pool_size,
        )

    def create_user(self, password: str, *, grant: bool = True) -> str:
        """A new user of the server (the tests' user must be allowed to create users) with
        ``password`` and, if ``grant``, every privilege on this database; dropped at the end
        of the session."""
        user = f"rs_{secrets.token_hex(6)}"
        with self.address.connect() as connection, connection.cursor() as cursor:
            cursor.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
            if grant:
                cursor.execute(f"GRANT ALL PRIVILEGES ON `{self.name}`.* TO %s@'%%'", (user,))
        self._users.append(user)
        return user

    def drop(self) -> None:
        with self.address.connect() as connection, connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
            for user in self._users:
                cursor.execute("DROP USER IF EXISTS %s@'%%'", (user,))


_server: ThrowawayServer | None = None
_database: TestDatabase | None = None
_next_game_id = 10_000


def server() -> ServerAddress:
    """The test server: REPLAYSERVER_TEST_DB's, or a throwaway one started on first use."""
    global _server
    url = os.environ.get(ENVIRONMENT_VARIABLE)
    if url:
        return parse_url(url)
    if _server is None:
        atexit.register(shutdown)
        _server = ThrowawayServer()
        try:
            _server.start()
        except BaseException:
            _server.stop()
            _server = None
            raise
    return _server.address


def database() -> TestDatabase:
    """This session's test database (created and filled on first use)."""
    global _database
    if _database is None:
        _database = TestDatabase(server())
    return _database


def new_game_id() -> int:
    """A game id that no fixture and no other test of this session uses."""
    global _next_game_id
    _next_game_id += 1
    return _next_game_id


def live_game(**changes) -> Game:
    """A game launched 10 s ago that has not ended, with a fresh id (not inserted)."""
    fields = dict(
        game_id=new_game_id(), mod=FAF, host="user1", title="Live game", game_type="DEMORALIZATION",
        start=int(time.time()) - 10, end=None, map_folder="scmp_001",
        players=(Player("user1", 2), Player("Zoë", 3)),
    )
    return Game(**(fields | changes))


def shutdown() -> None:
    """Drop this session's database and stop the throwaway server, if they exist."""
    global _server, _database
    if _database is not None:
        try:
            _database.drop()
        finally:
            _database = None
    if _server is not None:
        _server.stop()
        _server = None
