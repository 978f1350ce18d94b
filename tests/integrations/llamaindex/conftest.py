"""The LlamaIndex suite runs in its own environment (.venv-llamaindex, see requirements.txt
here): llama-index-llms-openai pins openai<3, the project's own environment has openai 3.
It runs in the lowest environment too (.venv-lowest, `make test-lowest`).
The fixtures (`guard`, `clock`, `store`) come from tests/conftest.py, which pytest loads as a
parent conftest; the `support` helpers are importable as in every suite.

Where LlamaIndex is not installed (the main run), nothing here is collected.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("llama_index") is None or importlib.util.find_spec(
        "llama_index.llms.openai") is None:
    collect_ignore_glob = ["*"]
