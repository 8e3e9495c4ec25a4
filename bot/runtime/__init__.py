"""The engine that hosts the core, and the executors that carry out its commands (publisher, finisher, rounds)."""
