"""A small Flask app for the start-up benchmark: importing it is the measured work.

Run as a script it builds the app and exits (no server): what an agent adds
here is what every `flask run`, gunicorn worker or CLI command pays at start.
"""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/")
def index():
    return "hello\n"


@app.get("/users/<int:user_id>")
def user(user_id):
    return jsonify(id=user_id)


if __name__ == "__main__":
    assert app.url_map is not None
