"""Whether a hub model can be loaded here, decided in a second before torch is imported.

Left alone, a load of a hub id with no hub in reach costs ~26 s of huggingface_hub's
retries and ends in a multi-line library error. So before any command loads a model
that is not a local directory, one short request asks the hub (HF_ENDPOINT) for the
model's config. If the hub does not answer (or HF_HUB_OFFLINE is set), the process goes
offline, so a model in the local cache loads from it with no network attempt; a model
that is not cached is a ConfigError (exit 78) naming both facts and what to do.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from argus_embedder import errors

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT = 3.0  # seconds: the whole check stays well under 5 s
_TRUE = {"1", "on", "yes", "true"}


def is_local(model: str) -> bool:
    """Whether `model` names a directory rather than a hub id ("name" or "owner/name"):
    transformers would report a missing directory as a malformed repo id."""
    return (
        model.startswith(("/", ".", "~"))
        or model.count("/") > 1
        or Path(model).expanduser().is_dir()
    )


@functools.cache  # a process asks once per model (its commands, then each loader)
def ensure_loadable(model: str) -> None:
    """Return when `model` can be loaded (a local directory, the hub in reach, or the
    hub out of reach and the model in the local cache, this process then offline);
    else raise ConfigError. A directory that does not exist is a ConfigError too."""
    if is_local(model):
        if not Path(model).expanduser().is_dir():
            raise errors.ConfigError(f"model {model!r} is not loadable: no such directory")
        return
    reason = offline_reason(model)
    if reason is None:
        return
    go_offline()
    if not _cached(model):
        raise errors.ConfigError(
            f"model {model!r} is not loadable: {reason} and it is not in the local Hugging "
            "Face cache; set ARGUS_MODEL to a local model directory, or run "
            "`argus-embedder demo`, whose model the other commands then use"
        )
    log.info("%s; loading %s from the local cache", reason, model)


def offline_reason(model: str) -> str | None:
    """None when the hub answers for `model`; else why it is out of reach, as a clause."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        return "HF_HUB_OFFLINE is set"
    if os.environ.get("TRANSFORMERS_OFFLINE", "").lower() in _TRUE:
        return "TRANSFORMERS_OFFLINE is set"
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    url = f"{endpoint}/{urllib.parse.quote(model)}/resolve/main/config.json"
    request = urllib.request.Request(url, method="HEAD")  # noqa: S310 - http(s) endpoint
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT):  # noqa: S310
            return None
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return f"the hub at {endpoint} has no model {model!r} (HTTP 404)"
        if error.code < 500:
            return None  # 401/403: a gated model; the loader brings the user's token
        return f"the hub at {endpoint} answers HTTP {error.code}"
    except (OSError, ValueError) as error:  # URLError, timeouts, resets, a bad endpoint
        cause = str(getattr(error, "reason", error)).strip() or type(error).__name__
        return f"the hub at {endpoint} is unreachable ({cause[:120]})"


def go_offline() -> None:
    """Make huggingface_hub and transformers use the local cache only, in this process
    (the constant is read at import, so an already imported module is set as well)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]


def _cached(model: str) -> bool:
    import huggingface_hub

    found = huggingface_hub.try_to_load_from_cache(model, "config.json")
    return isinstance(found, str)
