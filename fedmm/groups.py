"""The parameter-group rule, once, for server, models and update vectors (no torch, no flwr).

Every parameter's name carries its group: ``encoders.<m>.*``, ``heads.<m>.*`` and
``projectors.<m>.*`` belong to modality ``m``; everything under ``fusion.*`` is shared. A client
training modalities ``S`` receives and uploads the groups of ``S`` plus the shared group.
"""

from __future__ import annotations

from collections.abc import Iterable

SHARED_GROUP = "fusion"
MODALITY_GROUP_PREFIXES = ("encoders", "heads", "projectors")


def parameter_group(name: str) -> str:
    """The aggregation group of a state key: ``"encoders.acc"``, ``"heads.gyro"``, ``"fusion"``.

    >>> parameter_group("encoders.acc.0.weight")
    'encoders.acc'
    >>> parameter_group("fusion.linear.bias")
    'fusion'

    Raises ``ValueError`` for a name outside every group.
    """
    parts = name.split(".")
    if parts[0] in MODALITY_GROUP_PREFIXES and len(parts) > 2:
        return f"{parts[0]}.{parts[1]}"
    if parts[0] == SHARED_GROUP:
        return SHARED_GROUP
    raise ValueError(
        f"parameter {name!r} belongs to no group: names must start with "
        f"{', '.join(p + '.<modality>.' for p in MODALITY_GROUP_PREFIXES)} or '{SHARED_GROUP}.'"
    )


def group_modality(group: str) -> str | None:
    """The modality a group belongs to, or ``None`` for the shared group."""
    return None if group == SHARED_GROUP else group.split(".", 1)[1]


def key_modality(name: str) -> str | None:
    """The modality that owns a state key, ``None`` for shared keys."""
    return group_modality(parameter_group(name))


def keys_for_modalities(keys: Iterable[str], modalities: Iterable[str]) -> list[str]:
    """The keys a client training ``modalities`` needs and uploads: theirs and the shared ones."""
    allowed = {None, *modalities}
    return [k for k in keys if key_modality(k) in allowed]


def is_encoder_key(name: str, modality: str) -> bool:
    """Whether state key ``name`` belongs to ``modality``'s encoder (update vectors use only those)."""
    return parameter_group(name) == f"encoders.{modality}"
