"""Peer for the load benchmark (issue 7): the original tutorial app's chat on
Flask-SocketIO. Login with a name, land in a room (``general`` unless one is given),
``send_message`` -> ``message`` to everyone in the room, the sender included.

    python app.py --mode gevent   --port 5002
    python app.py --mode threading --port 5003   # the original app's default mode

Binds 127.0.0.1 only.
"""
import argparse
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--mode", choices=["gevent", "threading"], default="threading")
parser.add_argument("--port", type=int, default=5002)
args = parser.parse_args()

if args.mode == "gevent":
    from gevent import monkey

    monkey.patch_all()

import time  # noqa: E402

from flask import Flask, request  # noqa: E402
from flask_socketio import SocketIO, emit, join_room  # noqa: E402

app = Flask(__name__)
app.config["SECRET_KEY"] = "bench"
socketio = SocketIO(app, async_mode=args.mode, cors_allowed_origins="*")

rooms = {}  # room -> set of names
users = {}  # sid -> (name, room)


@socketio.on("login")
def login(data):
    name = data.get("name")
    room = data.get("room") or "general"
    users[request.sid] = (name, room)
    members = rooms.setdefault(room, set())
    members.add(name)
    join_room(room)
    emit("joined", {"room": room, "members": sorted(members)})
    emit("user_joined", {"room": room, "user": name, "ts": time.time()}, to=room, include_self=False)


@socketio.on("send_message")
def send_message(data):
    entry = users.get(request.sid)
    if entry is None:
        return
    name, room = entry
    emit("message", {"room": room, "user": name, "body": data.get("body", ""), "ts": time.time()}, to=room)


@socketio.on("disconnect")
def disconnect(*_):
    entry = users.pop(request.sid, None)
    if entry is None:
        return
    name, room = entry
    rooms.get(room, set()).discard(name)
    emit("user_left", {"room": room, "user": name, "ts": time.time()}, to=room)


if __name__ == "__main__":
    print(f"listening on http://127.0.0.1:{args.port}", flush=True)
    sys.stdout.flush()
    socketio.run(app, host="127.0.0.1", port=args.port, allow_unsafe_werkzeug=True, log_output=False)
