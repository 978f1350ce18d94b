"""Adapters that turn a framework's call into reserve → call → commit | release.

Each lives in its own module and imports its framework only when imported itself.
"""
