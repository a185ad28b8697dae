"""``im client``: a terminal chat on the client library, drawn with Textual.

- tui/model.py: what is shown (conversations, lines, unread, receipts, typing), sans-IO;
- tui/session.py: the library's events into the model, the user's actions out;
- tui/screens.py: the login and chat screens.
"""
