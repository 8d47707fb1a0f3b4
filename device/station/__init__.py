"""The station daemon: camera → verdict → reject signal → record (no torch)."""
