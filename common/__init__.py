"""Shared pieces of every process: frame codec, link windows, config, errors, tokens, crypto.

Layering rule: ``common`` imports only ``proto`` of ours, never a service package.
"""
