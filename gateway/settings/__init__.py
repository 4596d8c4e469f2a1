"""Settings modules: ``local`` (embedded defaults), ``production``, ``test``."""
