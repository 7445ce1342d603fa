"""Our options in `locust --help`, which Locust prints before it imports any locustfile.

Locust parses `-h/--help` first and exits, so options that a locustfile registers never show
there (locustio/locust#2917); its only earlier hook is importing a package named
`locust_plugins`, which is another project's name. gevent, though, calls plugins while
`import locust` patches the process (entry point `gevent.plugins.monkey.did_patch_all`, in
pyproject.toml). In a `locust ... --help` process, and only there, `on_patch_all` registers the
`llm-chaos` option group on Locust's event bus as soon as that bus exists.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

__all__ = ["asks_locust_for_help", "on_patch_all"]


def asks_locust_for_help(argv: Sequence[str], orig_argv: Sequence[str] = ()) -> bool:
    """Whether `argv` is `locust ... -h|--help` (the console script or `python -m locust`;
    while `-m` imports the package, `argv[0]` is "-m" and `orig_argv` names the module)."""
    if not argv:
        return False
    if argv[0] == "-m":
        is_locust = any(a == "-m" and b == "locust" for a, b in itertools.pairwise(orig_argv))
    else:
        is_locust = PurePath(argv[0]).stem == "locust"
    return is_locust and any(a in ("-h", "--help") for a in argv[1:])


def on_patch_all(_event: Any) -> None:
    """gevent's did_patch_all plugin: in `locust --help`, wait for Locust's event bus."""
    if asks_locust_for_help(sys.argv, sys.orig_argv):
        sys.meta_path.insert(0, _WhenLocustIsLoaded())


class _WhenLocustIsLoaded:
    """A meta-path finder that finds nothing: it watches imports until `locust.events`
    exists (`locust/__init__` has run; `locust.main` is imported next), then registers."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        locust = sys.modules.get("locust")
        if getattr(locust, "events", None) is None:
            return
        sys.meta_path.remove(self)
        from .plugin import add_options

        locust.events.init_command_line_parser.add_listener(add_options)  # type: ignore[union-attr]
