"""Conversations as durable timelines (issue 13): the store, the write queue, the writer."""
