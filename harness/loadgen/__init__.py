"""Load generation for LLM token streams: Locust users, per-request records, prompts, shapes.

Only the modules `users`, `plugin` and `shape` import Locust (which patches the process with
gevent; `locust_help`, gevent's plugin that puts our options in `locust --help`, imports
`plugin` only there); everything else here is plain Python and safe to import anywhere:

- `sse`: incremental Server-Sent Events decoder.
- `client`: one OpenAI request over httpx, every event timestamped as it arrives.
- `metrics`: TTFT, ITL, TPOT, e2e and token counts of one request, as DESIGN.md defines them.
- `records`: the `history.jsonl` line of a request and the run directory.
- `llm_stats`: the LLM table (TTFT, ITL, TPOT, tokens/s per scenario) from history lines.
- `tokens`: the target model's tokenizer, for counting.
- `prompts`: seeded prompt sources (synthetic lengths, bundled, shared prefix, multi-turn).
- `arrivals`, `shapes`: open-loop arrival schedules and user-count shapes, as pure functions.
- `console_model`: what the game-day console shows, from the run directory as it grows;
  `console` (gevent and Flask: imported only inside Locust) puts it in the web UI's Chaos tab.
"""

from __future__ import annotations

__all__: list[str] = []
