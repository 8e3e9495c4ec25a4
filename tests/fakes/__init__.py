"""Shared test doubles: a strict fake GitHub, real webhook payloads and their pytest fixtures."""
