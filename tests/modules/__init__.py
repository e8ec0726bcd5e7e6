"""Tests of the chatmail Salt execution and state modules."""
