"""A real HTTP server speaking the /v1/chat/completions shape, for judge tests.

``respond(headers, body)`` returns ``(status, content, extra_headers)``: a 200 carries
``content`` as the assistant message, any other status an OpenAI-style error body.
``GET /v1/models`` (the judge's reachability check) answers ``models_status`` (200: a list
naming ``models``) and is counted in ``model_checks``, never passed to ``respond``.
"""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Respond = Callable[[dict, dict], tuple[int, str, dict]]


class ChatEndpoint:
    def __init__(self, respond: Respond, usage: tuple[int, int] = (11, 5), models_status: int = 200,
                 models: tuple[str, ...] = (), port: int = 0):
        self.respond = respond
        self.lock = threading.Lock()
        self.models_status = models_status
        self.models = models
        self.model_checks = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with endpoint.lock:
                    endpoint.model_checks += 1
                    status = endpoint.models_status if self.path.rstrip("/") == "/v1/models" else 404
                if status == 200:
                    payload = {"object": "list", "data": [{"id": m, "object": "model"} for m in endpoint.models]}
                else:
                    payload = {"error": {"message": f"scripted {status}", "type": "server_error"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint.lock:
                    status, content, headers = endpoint.respond(dict(self.headers), body)
                if status == 200:
                    payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                            "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                                         "total_tokens": usage[0] + usage[1]}}
                else:
                    payload = {"error": {"message": f"scripted {status}", "type": "server_error"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A port nothing listens on: bound, read, closed."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
