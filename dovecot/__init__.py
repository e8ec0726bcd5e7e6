"""The relay's patched Dovecot: build, cache and publish (see build.py)."""
