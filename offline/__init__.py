"""Offline messages: the store (save, drain with the has_read CAS of seed §10.2) and the queue
that carries messages for offline users to the writer that stores them.
"""
