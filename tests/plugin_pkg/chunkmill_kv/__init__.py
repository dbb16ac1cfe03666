"""Example chunkmill reader plugin (see `chunkmill_kv.reader`)."""
