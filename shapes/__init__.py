"""Shapes: the kinds of GPU node the clouds sell, and the bundled, dated catalog of them.

Nothing here imports a cloud SDK or does network I/O.
"""

from shapes.catalog import (
    Catalog,
    CatalogSource,
    Rejection,
    ShapeFilter,
    load_catalog,
)
from shapes.errors import CatalogError
from shapes.gpus import CANONICAL_GPUS, gpu_filter_names, normalize_gpu
from shapes.model import Provisioning, Shape, ShapeId, parse_shape_id, shape_key

__all__ = [
    "CANONICAL_GPUS",
    "Catalog",
    "CatalogError",
    "CatalogSource",
    "Provisioning",
    "Rejection",
    "Shape",
    "ShapeFilter",
    "ShapeId",
    "gpu_filter_names",
    "load_catalog",
    "normalize_gpu",
    "parse_shape_id",
    "shape_key",
]
