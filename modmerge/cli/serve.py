"""`modmerge serve ...` commands (registered on the main group by importing this module)."""

from __future__ import annotations
