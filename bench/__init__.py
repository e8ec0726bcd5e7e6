"""Benchmarks of chatmail-salt; run them all with ``./cmsalt bench``."""
