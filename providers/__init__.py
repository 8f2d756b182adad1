"""Cloud provider adapters (AWS, GCP, Azure, and a simulated cloud).

The provider interface and its adapters build on :mod:`shapes`; nothing here is imported
on the quote path, and each adapter imports its cloud SDK lazily.
"""
