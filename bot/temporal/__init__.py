"""The Temporal engine (SPEC §7): the same session core as a workflow per issue, worker hosts, front ends."""
