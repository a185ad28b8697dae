"""Test hosts and clustered backing services, for runs across a real network boundary.

Not part of the servers: a tool for tests, ``im chaos`` across hosts and trying a three-machine
layout on one machine. :mod:`testbed.netns` makes the hosts (network namespaces on a private
bridge) and injects faults between them; :mod:`testbed.sentinel`, :mod:`testbed.rabbit` and
:mod:`testbed.galera` start Redis with Sentinel, a RabbitMQ cluster and a Galera cluster in
them from Debian's packages; :mod:`testbed.app` spreads the ``im`` services over them.
``python -m testbed`` does the same from a shell. Imports only the standard library and, in
:mod:`testbed.app`, nothing of ours: the services are started as ``im`` processes.
"""
