"""Test support shared by unit and integration tests: keys and tokens built on demand."""
