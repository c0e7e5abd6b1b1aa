"""Header-derived metadata: every REFERENCE §7 key, values checked against fafreplay's parser."""
import json

import fafreplay
from twisted.trial.unittest import SynchronousTestCase

from replayserver.replay.header import parse_header
from replayserver.save.interfaces import IMetadataSource
from replayserver.save.metadata import HeaderMetadata, header_metadata
from tests.support import samples

#: Every key of REFERENCE §7 except compression/version (added by the container writer).
KEYS = {
    "uid", "complete", "state", "featured_mod", "featured_mod_versions", "game_type", "host",
    "recorder", "launched_at", "game_end", "title", "mapname", "num_players", "teams",
}


def text(value):
    return value.decode() if isinstance(value, bytes) else value


def oracle_teams(data: bytes) -> dict:
    """Teams of the human armies, as fafreplay reads them."""
    armies = fafreplay.Parser().parse_header(data)["armies"]
    teams = {}
    for source in sorted(armies, key=lambda s: -1 if s == 255 else s):
        options = armies[source]
        if options.get("Human") is True:
            teams.setdefault(str(int(options["Team"])), []).append(text(options["PlayerName"]))
    return teams


class HeaderMetadataTests(SynchronousTestCase):
    def test_every_key_for_every_sample(self):
        for name in samples.VALID_SCFA + samples.DIVERGING:
            with self.subTest(sample=name):
                data = samples.read(name)
                header = parse_header(data)
                meta = header_metadata(1234, header, 1000.7, 2000.2)
                self.assertEqual(set(meta), KEYS)
                self.assertEqual(json.loads(json.dumps(meta)), meta)  # plain JSON values
                self.assertEqual((meta["uid"], meta["complete"], meta["state"]),
                                 (1234, True, "PLAYING"))
                self.assertEqual((meta["launched_at"], meta["game_end"]), (1000, 2000))
                self.assertEqual(meta["featured_mod_versions"], {})
                oracle = fafreplay.Parser().parse_header(data)
                map_file = text(oracle["map_file"])
                self.assertEqual(meta["mapname"], map_file.split("/")[2].lower())
                self.assertEqual(meta["title"], text(oracle["scenario"]["name"]))
                victory = text(oracle["scenario"]["Options"]["Victory"])
                self.assertEqual(meta["game_type"], victory.upper())
                self.assertEqual(
                    {team: sorted(names) for team, names in meta["teams"].items()},
                    {team: sorted(names) for team, names in oracle_teams(data).items()},
                )
                humans = sum(len(names) for names in meta["teams"].values())
                self.assertGreaterEqual(meta["num_players"], humans)

    def test_featured_mod(self):
        coop = header_metadata(1, parse_header(samples.read("8945286.scfareplay")), 0, 0)
        self.assertEqual(coop["featured_mod"], "coop")
        ladder = header_metadata(1, parse_header(samples.read("8805603.scfareplay")), 0, 0)
        self.assertEqual(ladder["featured_mod"], "faf")

    def test_players_count_ai_but_not_civilians(self):
        # 8468507: 6 humans, 1 Sorian AI, 2 civilian armies (SOURCES.md)
        survival = header_metadata(1, parse_header(samples.read("8468507.scfareplay")), 0, 0)
        self.assertEqual(survival["num_players"], 7)
        # 8945286: 1 human, the scripted armies "Cybran" and "NeutralCybran" do not play
        coop = header_metadata(1, parse_header(samples.read("8945286.scfareplay")), 0, 0)
        self.assertEqual(coop["num_players"], 1)

    def test_without_header(self):
        meta = header_metadata(5, None, 10, 20)
        self.assertEqual(set(meta), KEYS)
        self.assertEqual((meta["mapname"], meta["num_players"], meta["teams"]), ("None", 0, {}))
        self.assertEqual(meta["featured_mod"], "faf")

    def test_source_interface(self):
        source = HeaderMetadata()
        self.assertTrue(IMetadataSource.providedBy(source))
        header = parse_header(samples.read("8805603.scfareplay"))
        result = self.successResultOf(source.metadata(9, header, 1.0, 2.0))
        self.assertEqual(result, header_metadata(9, header, 1.0, 2.0))
