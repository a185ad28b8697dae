"""The retired offline store (``im_offline``). Nothing delivers through it any more: every chat
is committed to its conversation's timeline, and a device that was away catches up from there.
What is left is read only by ``im migrate``, which imports old rows into the timelines
(offline/legacy.py). Nothing is imported here, so that needs none of the rest.
"""
