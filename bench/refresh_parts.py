"""Where the daemon's first refresh spends its time: the consumer in this process,
three ways, against the daemon configuration given (a fresh state directory each run).

    .venv/bin/python bench/refresh_parts.py CONFIG STATE_ROOT [--runs N]

- `full`: as the daemon does it (decode, mirror rows, SQLite inserts, commit);
- `rows`: decode and build each mirror row (the DN's path, the pending flag) but do not
  hand them to SQLite;
- `decode`: read and decode every message, store nothing.

Prints one JSON object: variant -> median seconds over --runs. bench_directory.py runs
it for figure 2; the differences are the cost of each stage.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provbackup import config as configuration  # noqa: E402
from provbackup.directory.mirror import Mirror  # noqa: E402
from provbackup.directory.syncrepl import SyncreplConsumer  # noqa: E402


class RowsOnly(Mirror):
    """Builds each row as Mirror.store does, then drops it."""

    def store(self, uuid: str, dn: str, blob: bytes) -> None:
        self.row(uuid, dn, blob)


class Nothing(Mirror):
    def store(self, uuid: str, dn: str, blob: bytes) -> None:
        pass


VARIANTS = {"full": Mirror, "rows": RowsOnly, "decode": Nothing}


def refresh(config_path: Path, state: Path, kind: type[Mirror]) -> float:
    config = configuration.load(config_path)
    state.mkdir(parents=True)
    mirror = kind(state / "syncrepl.cookie")

    class Listener:
        def changed(self, entry) -> None:
            pass

        def refreshed(self) -> None:
            consumer.stop()

    consumer = SyncreplConsumer(config.ldap, mirror, Listener())
    start = time.monotonic()
    consumer.run()  # returns after the refresh: refreshed() stopped it
    seconds = time.monotonic() - start
    mirror.close()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("state_root", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for k in range(args.runs):
        for name, kind in VARIANTS.items():  # interleaved: drift hits all alike
            times[name].append(refresh(args.config, args.state_root / f"{name}-{k}", kind))
    print(json.dumps({name: statistics.median(t) for name, t in times.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
