"""The LlamaIndex suite, a package so that its conftest does not shadow ../conftest.py."""
