"""`llm-chaos explore EXP.yaml`: property-based chaos. Hypothesis draws fault schedules against
the reference target, each run as a short experiment whose checks are the invariants, and
shrinks a failing one to the smallest schedule that still breaks the same check, written as an
experiment file `llm-chaos run` replays.

- `search`: the search itself (`explore`, `ExploreSettings`, `ExploreResult`, `Example`;
  imported from there, so building the CLI's parser does not import Hypothesis); `cli`: the
  subcommand.
"""

from __future__ import annotations

from .cli import add_parser

__all__ = ["add_parser"]
