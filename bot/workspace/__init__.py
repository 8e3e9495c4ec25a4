"""Repositories on disk: mirrors, per-session repositories, hardened git and the one push."""
