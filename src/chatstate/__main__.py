"""`python -m chatstate ...` runs the CLI (the same as the `chatstate` command)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
