"""Agents and their confinement: adapters, the agent-only tool, turns, processes, sandbox, egress and limits."""
