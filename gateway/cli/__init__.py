"""The command line: verbs, the supervisor of worker processes, and the demo."""
