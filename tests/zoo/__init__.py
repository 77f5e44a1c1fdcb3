"""Tests of ``zoo``: the registry, checkpoint reading and checks, downloads against the local fault server, the
cache."""
