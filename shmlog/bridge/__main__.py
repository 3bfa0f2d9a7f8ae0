"""`python -m shmlog.bridge --data-dir D NAME`: run the managed mirror NAME
(its spec is <D>/mirrors/NAME.json) until SIGTERM. The supervisor starts
this and restarts it when it dies."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from .. import errors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shmlog.bridge", description=__doc__)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("name")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from ..client.cluster import connect
    from . import spec as specmod

    try:
        spec = specmod.read_spec(args.data_dir, args.name)
        with connect(args.data_dir) as cluster:
            m = specmod.build(cluster, spec)
            signal.signal(signal.SIGTERM, lambda *_: m.stop())
            signal.signal(signal.SIGINT, lambda *_: m.stop())
            m.run()
    except errors.ShmlogError as exc:
        print(f"shmlog mirror {args.name}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
