"""Raw records from a JSONL file or a JSON list, streamed, with every problem located instead of raised: the one
reader lives in `camelid.core.records` (every layer reads through it); this module keeps the data layer's name."""

from __future__ import annotations

from camelid.core.records import Record, iter_records

__all__ = ["Record", "iter_records"]
