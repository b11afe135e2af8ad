"""The registered ONNX student's versions, their aliases, and which one is the champion.

``export`` registers each exported student as a new version of ``mlflow.registered_model`` and gives it
the alias ``candidate``. ``evaluate`` then records on the version what it measured (accuracy of the ONNX
file, its size, its batch-1 latency) with the git commit and DVC experiment, writes its description,
and decides: the alias ``champion`` moves to the candidate only when its accuracy beats the champion's
by ``mlflow.champion_margin`` and its latency is within ``mlflow.champion_max_latency_ms``; the first
version becomes champion. Serving ``models:/<name>@champion`` always gets the best version so far.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CANDIDATE = "candidate"
CHAMPION = "champion"
ACCURACY_TAG = "accuracy"
LATENCY_TAG = "latency_ms_onnx_b1"
BYTES_TAG = "onnx_bytes"


@dataclass(frozen=True)
class Decision:
    promoted: bool
    champion: str  # the version that holds the alias afterwards
    reason: str

    def describe(self, name: str, version: str) -> str:
        if self.promoted:
            verdict = f"v{version} is the new champion"
        elif self.champion == "none":
            verdict = "no champion yet"
        else:
            verdict = f"champion stays v{self.champion}"
        return f"{name} v{version} is '{CANDIDATE}'; {verdict}: {self.reason}"


def decide(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    margin: float,
    max_latency_ms: float | None,
) -> tuple[bool, str]:
    """Whether ``candidate`` (accuracy, latency_ms) should replace ``champion`` (None: there is none),
    and why, in words."""
    acc, latency = candidate["accuracy"], candidate["latency_ms"]
    if max_latency_ms is not None and latency > max_latency_ms:
        return False, (
            f"its batch-1 latency {latency:.4f} ms exceeds mlflow.champion_max_latency_ms = {max_latency_ms:g}"
        )
    if champion is None:
        return True, "there was no champion yet"
    if "accuracy" not in champion:
        return True, "the champion has no recorded accuracy to beat"
    needed = champion["accuracy"] + margin
    if acc >= needed:
        return True, (
            f"accuracy {acc:.4f} >= champion's {champion['accuracy']:.4f} + margin {margin:g}, "
            f"latency {latency:.4f} ms within the bound"
        )
    return False, f"accuracy {acc:.4f} < champion's {champion['accuracy']:.4f} + margin {margin:g}"


def mark_candidate(client: Any, name: str, version: str, tags: Mapping[str, str]) -> None:
    """A freshly registered version: alias ``candidate`` and where it came from (commit, experiment)."""
    client.set_registered_model_alias(name, CANDIDATE, version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _measured(client: Any, name: str, version: str) -> dict[str, float]:
    tags = client.get_model_version(name, version).tags
    found = {}
    for key, tag in (("accuracy", ACCURACY_TAG), ("latency_ms", LATENCY_TAG)):
        try:
            found[key] = float(tags[tag])
        except (KeyError, ValueError):
            continue
    return found


def evaluate_candidate(
    client: Any,
    name: str,
    version: str,
    measured: Mapping[str, float],
    description: str,
    margin: float,
    max_latency_ms: float | None,
) -> Decision:
    """Record ``measured`` (accuracy, latency_ms, onnx_bytes) on the version, describe it, and move the
    ``champion`` alias to it when :func:`decide` says so."""
    tags = {
        ACCURACY_TAG: f"{measured['accuracy']:.4f}",
        LATENCY_TAG: f"{measured['latency_ms']:.4f}",
        BYTES_TAG: str(int(measured["onnx_bytes"])),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=description)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION).version
    except Exception:  # no such alias yet (MLflow raises when it is missing)
        current = None
    if current is not None and str(current) == str(version):
        return Decision(False, str(version), "it already is the champion")
    champion = _measured(client, name, str(current)) if current is not None else None
    promote, reason = decide(measured, champion, margin, max_latency_ms)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
        return Decision(True, str(version), reason)
    return Decision(False, str(current) if current is not None else "none", reason)
