"""Where each user is online (seed §4.1): user -> {device: connector}.

Two implementations of one :class:`UserStatusService` protocol: in-memory for the embedded mode
and tests, Redis for a cluster. :func:`create` picks one from the settings.
"""
