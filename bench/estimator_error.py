"""How close the offline input-token estimate comes to what providers counted: every recorded
request in tests/integrations/cassettes, estimated as the adapters estimate it, against the
usage the provider reported for it.

    python bench/estimator_error.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from allotment.estimation import input_tokens
from allotment.integrations.anthropic import hidden_prompt_tokens

CASSETTES = Path(__file__).resolve().parent.parent / "tests" / "integrations" / "cassettes"


def reported(provider: str, response: str) -> int:
    """Input tokens as the provider counted them (Anthropic's cache tokens added back)."""
    if provider == "openai":
        found = re.findall(r'"(?:prompt_tokens|input_tokens)":\s*(\d+)', response)
        return int(found[-1])

    def first(name: str) -> int:
        hit = re.search(rf'"{name}":\s*(\d+)', response)
        return int(hit.group(1)) if hit else 0

    return first("input_tokens") + first("cache_read_input_tokens") + first(
        "cache_creation_input_tokens")


def main() -> int:
    print(f"{'cassette':40} {'estimate':>9} {'reported':>9} {'ratio':>6}")
    ratios = []
    for path in sorted(CASSETTES.glob("*.yaml")):
        provider = path.name.split("_")[0]
        interaction = yaml.safe_load(path.read_text())["interactions"][0]
        request = json.loads(interaction["request"]["body"])
        overhead = hidden_prompt_tokens(request) if provider == "anthropic" else 0
        estimate = input_tokens(request, overhead)
        real = reported(provider, interaction["response"]["body"]["string"])
        ratios.append(estimate / real)
        print(f"{path.stem:40} {estimate:9d} {real:9d} {estimate / real:6.2f}")
    under = [r for r in ratios if r < 1]
    print(f"\nratio estimate/reported: min {min(ratios):.2f}, max {max(ratios):.2f}, "
          f"median {sorted(ratios)[len(ratios) // 2]:.2f}; under-estimates: {len(under)}")
    return 1 if under else 0


if __name__ == "__main__":
    raise SystemExit(main())
