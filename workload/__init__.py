"""The user side of the cluster's own tools: simulated users, their checkers and load.

``im demo``, ``im chaos`` and ``im bench`` drive the shippable client library (client/) from
here, so that library carries nothing but what an application needs.
"""
