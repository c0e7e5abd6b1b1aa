"""FAF's MariaDB: the connection pool, the replay server's queries, and the database-backed
metadata source (IMetadataSource) and replay index (IReplayIndex). See docs/database.md.

Every query runs in the adbapi pool's threads on that thread's PyMySQL connection. A connection
that the server dropped (idle timeout, KILL, restart) is discarded and the interaction is run once
more on a fresh connection, so such a drop never reaches a game. Any other failure to talk to the
database surfaces as DatabaseUnavailable, a transient failure that the caller retries later;
access denied (a wrong user or password) as its subclass DatabaseAccessDenied, whose message
says what to check.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any, Callable, Protocol, TypeVar

import pymysql
import pymysql.constants.CLIENT
from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from replayserver.game.admission import GameRow, IGameRows
from replayserver.replay.header import ReplayHeader
from replayserver.save.interfaces import IMetadataSource, IReplayIndex

# Server error codes meaning "access denied": for the user (a wrong password), for the database.
ACCESS_DENIED_CODES = frozenset({1045, 1044})
# Server error codes meaning "this connection is dead, a new one may work": server has gone
# away, lost connection during query, connection was killed, disconnected for inactivity.
LOST_CONNECTION_CODES = frozenset({2006, 2013, 1927, 4031})
# Server error codes that a later retry may fix (besides every client-side code, 2000-2999):
# too many connections, out of memory, handshake/host errors, access denied (a password being
# rotated), shutdown in progress, network errors, lock wait timeout, deadlock, read-only server
# (fail-over), query interrupted, statement timeout.
TRANSIENT_SERVER_CODES = frozenset({
    1040, 1041, 1042, 1043, 1044, 1045, 1053, 1077, 1078, 1079, 1080, 1152, 1153, 1154, 1155,
    1156, 1157, 1158, 1159, 1160, 1161, 1205, 1213, 1290, 1317, 1792, 1836, 1969,
}) | LOST_CONNECTION_CODES
# Mod names become part of table names (updates_<mod>, updates_<mod>_files).
MOD_NAME = re.compile(r"[A-Za-z0-9_-]+")
CONNECT_TIMEOUT = 5
QUERY_TIMEOUT = 30
MISSING_ROW_TIMEOUT = 300.0

T = TypeVar("T")
Cursor = pymysql.cursors.Cursor


class DatabaseUnavailable(Exception):
    """The database did not answer (or failed in a way that a later retry may fix)."""


class DatabaseAccessDenied(DatabaseUnavailable):
    """The database refused the configured user (MariaDB errors 1045, 1044); a later retry may
    work once the configuration (or the password being rotated) is right."""

    def __init__(self, user: str, error: BaseException) -> None:
        super().__init__(f"database access denied for user {user!r} — check database.user and"
                         f" the password (REPLAYSERVER_DATABASE_PASSWORD): {error}")
        self.user = user


class GameRowMissing(Exception):
    """The game has no game_stats row yet; it may still appear, so retry later."""


class DatabaseSettings(Protocol):
    """The `database` configuration section (read only)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def user(self) -> str: ...

    @property
    def password(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def pool_size(self) -> int: ...


def open_database(settings: DatabaseSettings, reactor: IReactorThreads) -> Database:
    """A Database on a pool of at most `pool_size` PyMySQL connections, sessions in UTC."""
    pool = ConnectionPool(
        "pymysql",
        host=settings.host,
        port=settings.port,
        user=settings.user,
        password=settings.password,
        database=settings.name,
        charset="utf8mb4",
        client_flag=pymysql.constants.CLIENT.FOUND_ROWS,  # UPDATE counts matched rows
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=QUERY_TIMEOUT,
        write_timeout=QUERY_TIMEOUT,
        cp_min=1,
        cp_max=max(1, settings.pool_size),
        cp_reconnect=True,
        cp_noisy=False,
        cp_openfun=_use_utc,
        cp_reactor=reactor,
    )
    return Database(pool, reactor, settings.user)


def _use_utc(connection: pymysql.connections.Connection) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET time_zone = '+00:00'")


def _error_code(error: BaseException) -> int | None:
    code = error.args[0] if error.args else None
    return code if isinstance(code, int) else None


def _connection_lost(error: BaseException) -> bool:
    return isinstance(error, pymysql.InterfaceError) or (
        isinstance(error, pymysql.Error) and _error_code(error) in LOST_CONNECTION_CODES
    )


def _transient(error: BaseException) -> bool:
    code = _error_code(error)
    return (
        isinstance(error, pymysql.InterfaceError)
        or code in TRANSIENT_SERVER_CODES
        or (code is not None and 2000 <= code < 3000)
    )


def _unavailable(failure: Failure, user: str) -> Failure:
    """Translate driver errors that a retry may fix into DatabaseUnavailable (or
    DatabaseAccessDenied); other errors (SQL or schema errors) stay as they are."""
    error = failure.value
    if isinstance(error, pymysql.Error) and _error_code(error) in ACCESS_DENIED_CODES:
        raise DatabaseAccessDenied(user, error) from None
    if isinstance(error, pymysql.Error) and _transient(error):
        raise DatabaseUnavailable(f"{type(error).__name__}: {error}") from None
    return failure


@implementer(IGameRows)
class Database:
    """The queries of the replay server, run on a ConnectionPool."""

    log = Logger()

    def __init__(self, pool: ConnectionPool, reactor: IReactorThreads, user: str) -> None:
        """``user``: the user the pool connects as (named when access is denied)."""
        self._pool = pool
        self._reactor = reactor
        self._user = user

    def close(self) -> None:
        """Stop the pool's threads and close its connections."""
        self._pool.close()

    def ping(self) -> Deferred[None]:
        """Health check: the database answers (fails with DatabaseUnavailable, or
        DatabaseAccessDenied, otherwise)."""
        return self.run(_select_one)

    def run(self, work: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run work(cursor, *args) in a pool thread and commit. `work` must be idempotent: it is
        run a second time, on a new connection, if the first one turns out to be dead. Fails
        with DatabaseUnavailable when the database cannot be reached, DatabaseAccessDenied
        when it refuses the user."""
        d = deferToThreadPool(self._reactor, self._pool.threadpool, self._with_retry, work, *args)
        return d.addErrback(_unavailable, self._user)

    # --- pool threads -------------------------------------------------------------------------
    def _with_retry(self, work: Callable[..., T], *args: Any) -> T:
        # The pool's threads and per-thread connections are used directly (connect/disconnect)
        # rather than through runInteraction: adbapi's Connection wrapper logs every failed
        # rollback on a dead connection twice as an error ("Rollback failed") and cannot retry.
        try:
            return self._attempt(work, args)
        except pymysql.Error as error:
            if not _connection_lost(error):
                raise
            self._reactor.callFromThread(
                self.log.info, "Database connection lost ({error}); retrying once", error=error
            )
        return self._attempt(work, args)

    def _attempt(self, work: Callable[..., T], args: tuple[Any, ...]) -> T:
        connection = self._pool.connect()
        try:
            with connection.cursor() as cursor:
                result = work(cursor, *args)
            connection.commit()
            return result
        except Exception as error:
            # never leave a transaction open: its snapshot would hide later rows
            if _connection_lost(error) or not self._rolled_back(connection):
                self._pool.disconnect(connection)
            raise

    @staticmethod
    def _rolled_back(connection: pymysql.connections.Connection) -> bool:
        try:
            connection.rollback()
        except pymysql.Error:
            return False
        return True

    # --- queries ------------------------------------------------------------------------------
    def game_row(self, game_id: int) -> Deferred[GameRow | None]:
        """The game's start, end and replay availability, or None if it has no row."""
        return self.run(_select_game_row, game_id)

    def replay_metadata(self, game_id: int) -> Deferred[dict[str, Any] | None]:
        """The .fafreplay metadata (docs/database.md) (game_end None while endTime is NULL), or None
        if the game has no row."""
        return self.run(_select_metadata, game_id)

    def mark_saved(self, game_id: int, ticks: int) -> Deferred[int]:
        """Record that the replay is in the vault; fires with the number of rows matched."""
        return self.run(_update_saved, game_id, ticks)


def _select_one(cursor: Cursor) -> None:
    cursor.execute("SELECT 1")


def _select_game_row(cursor: Cursor, game_id: int) -> GameRow | None:
    cursor.execute(
        "SELECT UNIX_TIMESTAMP(startTime), UNIX_TIMESTAMP(endTime), replay_available"
        " FROM game_stats WHERE id = %s",
        (game_id,),
    )
    row = cursor.fetchone()
    if row is None:
        return None
    start, end, available = row
    return GameRow(game_id, int(start), None if end is None else int(end), bool(available))


def _select_metadata(cursor: Cursor, game_id: int) -> dict[str, Any] | None:
    cursor.execute(
        "SELECT UNIX_TIMESTAMP(gs.startTime), UNIX_TIMESTAMP(gs.endTime), gs.gameType,"
        " gs.gameName, host.login, mods.gamemod, map.filename"
        " FROM game_stats gs"
        " LEFT JOIN login host ON host.id = gs.host"
        " LEFT JOIN game_featuredMods mods ON mods.id = gs.gameMod"
        " LEFT JOIN map_version map ON map.id = gs.mapId"
        " WHERE gs.id = %s",
        (game_id,),
    )
    row = cursor.fetchone()
    if row is None:
        return None
    start, end, game_type, title, host, mod, map_filename = row
    cursor.execute("SELECT COUNT(*) FROM game_player_stats WHERE gameId = %s", (game_id,))
    (num_players,) = cursor.fetchone() or (0,)
    cursor.execute(
        "SELECT gps.team, login.login FROM game_player_stats gps"
        " JOIN login ON login.id = gps.playerId"
        " WHERE gps.gameId = %s AND gps.AI = 0 ORDER BY gps.id",
        (game_id,),
    )
    teams: dict[str, list[str]] = {}
    for team, login in cursor.fetchall():
        teams.setdefault(str(team), []).append(login)
    return {
        "uid": game_id,
        "complete": True,
        "state": "PLAYING",
        "featured_mod": mod,
        "featured_mod_versions": _mod_versions(cursor, mod),
        "game_type": None if game_type is None else str(game_type),
        "host": host,
        "recorder": host,
        "launched_at": int(start),
        "game_end": None if end is None else int(end),
        "title": title,
        "mapname": _map_name(map_filename),
        "num_players": int(num_players),
        "teams": teams,
    }


def _mod_versions(cursor: Cursor, mod: str | None) -> dict[str, int]:
    if mod is None or not MOD_NAME.fullmatch(mod):
        return {}
    try:
        cursor.execute(
            f"SELECT fileId, MAX(version) FROM `updates_{mod}_files` GROUP BY fileId ORDER BY fileId"
        )
    except pymysql.Error as error:
        if _transient(error):
            raise
        return {}  # no update tables for this mod (ladder1v1, ...), or not the expected columns
    return {str(file_id): int(version) for file_id, version in cursor.fetchall()}


def _map_name(filename: str | None) -> str:
    if not filename:
        return "None"
    return posixpath.splitext(posixpath.basename(filename))[0]


def _update_saved(cursor: Cursor, game_id: int, ticks: int) -> int:
    return cursor.execute(
        "UPDATE game_stats SET replay_ticks = %s, replay_available = 1 WHERE id = %s",
        (ticks, game_id),
    )


@implementer(IMetadataSource)
class DatabaseMetadata:
    """IMetadataSource backed by the database.

    A game without a game_stats row fails with GameRowMissing (transient: its row may still be
    inserted) until `missing_row_timeout` seconds after its first miss; then the fallback source
    (header-derived metadata) is used and that is logged."""

    log = Logger()

    def __init__(
        self,
        database: Database,
        fallback: IMetadataSource,
        clock: IReactorTime,
        missing_row_timeout: float = MISSING_ROW_TIMEOUT,
    ) -> None:
        self._database = database
        self._fallback = fallback
        self._clock = clock
        self._missing_row_timeout = missing_row_timeout
        self._first_missing: dict[int, float] = {}

    def metadata(
        self, game_id: int, header: ReplayHeader | None, started_at: float, ended_at: float
    ) -> Deferred[dict[str, Any]]:
        """The game's metadata; fails with DatabaseUnavailable or GameRowMissing (transient)."""
        return ensureDeferred(self._metadata(game_id, header, started_at, ended_at))

    async def _metadata(
        self, game_id: int, header: ReplayHeader | None, started_at: float, ended_at: float
    ) -> dict[str, Any]:
        try:
            found = await self._database.replay_metadata(game_id)
        except DatabaseUnavailable:
            raise
        except pymysql.Error:
            self.log.failure(
                "Reading game {game_id}'s metadata failed; using metadata from its replay header",
                game_id=game_id,
            )
            return await self._fallback.metadata(game_id, header, started_at, ended_at)
        if found is not None:
            self._first_missing.pop(game_id, None)
            if found["game_end"] is None:
                found["game_end"] = int(ended_at)
            return found
        now = self._clock.seconds()
        if now - self._first_missing.setdefault(game_id, now) < self._missing_row_timeout:
            raise GameRowMissing(f"no game_stats row for game {game_id} yet")
        del self._first_missing[game_id]
        self.log.warn(
            "Game {game_id} still has no game_stats row after {timeout} s;"
            " saving it with metadata from its replay header",
            game_id=game_id, timeout=self._missing_row_timeout,
        )
        return await self._fallback.metadata(game_id, header, started_at, ended_at)


@implementer(IReplayIndex)
class DatabaseIndex:
    """IReplayIndex backed by game_stats.replay_available / replay_ticks."""

    log = Logger()

    def __init__(self, database: Database) -> None:
        self._database = database

    def mark_saved(self, game_id: int, ticks: int) -> Deferred[None]:
        """Only call this once the replay file is in the vault. Never writes replay_available = 0."""
        return self._database.mark_saved(game_id, ticks).addCallback(self._check_matched, game_id)

    def _check_matched(self, matched: int, game_id: int) -> None:
        if not matched:
            self.log.warn("Game {game_id} has no game_stats row: replay_available not set",
                          game_id=game_id)

    def is_saved(self, game_id: int) -> Deferred[bool]:
        d = self._database.game_row(game_id)
        return d.addCallback(lambda state: state is not None and state.replay_available)
