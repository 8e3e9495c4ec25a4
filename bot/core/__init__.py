"""The pure core: the session state machine and every decision it makes, with no I/O and no import from the rest of `bot`."""
