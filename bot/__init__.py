"""Shepherd: a GitHub App that turns labelled issues into pull requests written by AI coding agents."""
