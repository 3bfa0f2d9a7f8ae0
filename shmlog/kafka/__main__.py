"""python -m shmlog.kafka --data-dir D --listen HOST:PORT (the supervisor runs this)."""

from __future__ import annotations

import argparse
import logging
import sys

from .listener import run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m shmlog.kafka", description=__doc__)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--listen", default="127.0.0.1:9092", metavar="HOST:PORT")
    p.add_argument("--listen-fd", type=int, default=None, metavar="FD",
                   help="serve on this listening socket (the supervisor binds it) instead of binding")
    p.add_argument("--supervisor-pid", type=int, default=0, help="exit when this process is gone")
    p.add_argument("--max-request-bytes", type=int, default=100 << 20)
    p.add_argument("--no-auto-create-topics", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run(args.data_dir, args.listen, listen_fd=args.listen_fd, supervisor_pid=args.supervisor_pid,
               auto_create=not args.no_auto_create_topics, max_request_bytes=args.max_request_bytes)


if __name__ == "__main__":
    sys.exit(main())
