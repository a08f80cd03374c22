"""Pipeline stages: each reads and writes a run directory and skips finished work."""
