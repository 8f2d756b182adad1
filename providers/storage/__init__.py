"""Object storage for experiment artifacts and datasets: one interface (:mod:`.base`), one
backend per URL scheme (``file://``, ``s3://``, ``gs://``, ``az://``). Nodes never hold a
credential: the service signs short-lived URLs for exactly the objects a node may touch, and
the node moves the bytes with plain HTTP(S)."""
