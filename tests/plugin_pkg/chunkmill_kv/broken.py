"""A plugin module whose import fails, as one with a missing dependency would."""

import chunkmill_kv_dependency_that_is_not_installed  # noqa: F401

BrokenReader = None
