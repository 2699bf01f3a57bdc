"""Print pyproject's dependency floors as exact pins (`name==version`, one a line), for CI's floor leg.

    python .ci/floor.py [pyproject.toml]

Every `>=` floor of a dependency without an environment marker; the OpenTelemetry packages
that are released together with the SDK (proto, common) follow from these pins.
"""

import re
import sys


def floors(text: str) -> list:
    block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.M | re.S).group(1)
    pins = []
    for requirement in re.findall(r'"([^"]+)"', block):
        if ";" in requirement:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([^,\s]+)", requirement.strip())
        if match:
            pins.append("%s==%s" % match.groups())
    return pins


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml", encoding="utf-8") as f:
        print("\n".join(floors(f.read())))
