"""Repository-wide pytest setup: host fixtures live in tests/hosts/conftest.py."""
