"""Configuration: one YAML file to frozen settings, lint and schema (no I/O library, no core)."""
