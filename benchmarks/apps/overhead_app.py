"""The Flask app the overhead benchmark serves (gunicorn, one sync worker).

- GET /plain: returns text; 1 span under trace-run (the SERVER span).
- GET /all:   bench_work.work(): PostgreSQL, Redis, `requests`; 5 spans (/work: the same,
              its name in earlier results).
Nothing here knows about tracing.
"""

from bench_work import PLAIN, work
from flask import Flask

app = Flask(__name__)


@app.get("/plain")
def plain():
    return PLAIN


@app.get("/all")
def all_():
    return work()


app.add_url_rule("/work", "work", all_)
