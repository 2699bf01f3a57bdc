"""Which of the SDK's HTTP transports sends OTLP/HTTP batches. Standard library only: `--info`
asks too, from inside a program whose SDK may be half imported."""

import os


def urllib3_sends_the_same(endpoint: str) -> bool:
    """Whether urllib3 sends what requests would. requests differs only through what it reads from
    the environment (a proxy, a .netrc's credentials; CA bundles) and its CA store (certifi's), so:
    plain HTTP, no proxy variable, no .netrc (found as requests looks for one), and no `user:pw@`
    in the endpoint (requests sends it as Basic authentication, urllib3 would drop it)."""
    if not endpoint.lower().startswith("http://") or "@" in endpoint.split("/", 3)[2]:
        return False
    if any(k.lower().endswith("_proxy") and k.lower() != "no_proxy" and v for k, v in os.environ.items()):
        return False
    netrc = os.environ.get("NETRC")
    places = [netrc] if netrc is not None else ["~/.netrc", "~/_netrc"]
    return not any(os.path.exists(os.path.expanduser(p)) for p in places)
