"""Container image references, as ``docker pull`` takes them: checked where a person names
one (a request's ``image``, the configuration's ``[node] image``), so a typo is refused at
once, not found on every node after the GPUs are paid for."""

from __future__ import annotations

import re

_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REFERENCE = (
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?/)?"  # registry[:port]/
    rf"{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*"  # repository path
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"  # :tag
    r"(?:@sha256:[0-9a-f]{64})?"  # @digest
)
MAX_IMAGE = 512


def image_problem(image: str) -> str | None:
    """Why ``image`` is not a container image reference (``[registry/]repo[:tag][@digest]``,
    as ``docker pull`` takes it), or None. Checked here so a typo is refused at submit,
    not found on every node after the GPUs are paid for."""
    if len(image) > MAX_IMAGE:
        return f"an image reference is at most {MAX_IMAGE} characters, got {len(image)}"
    if re.fullmatch(_IMAGE_REFERENCE, image) is None:
        hint = " (repository names are lower case)" if image.lower() != image else ""
        return (
            f"{image[:80]!r} is not a container image reference such as "
            f"'nvcr.io/nvidia/pytorch:24.05-py3' or 'ghcr.io/org/train@sha256:<digest>'{hint}"
        )
    return None


__all__ = ["MAX_IMAGE", "image_problem"]
