"""`trace-run view`: a local OTLP backend (receiver, SQLite store, web pages).

Its own program: never imported by a traced program, and never traced itself.
"""
