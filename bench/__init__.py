"""shmlog's benchmark suite: ``python -m bench`` (see bench/__main__.py).

Not part of the installed package: it imports shmlog and, when present, the
peer systems it compares against (scripts/install-peers.sh installs them).
"""
