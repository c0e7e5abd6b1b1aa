"""Makes ``twistd replayserver`` known to twistd (the service is imported only when run)."""
from twisted.application.service import ServiceMaker

replayserver = ServiceMaker(
    "FAF replay server",
    "replayserver.tap",
    "Live replay server for Forged Alliance Forever: relays and saves game replays",
    "replayserver",
)
