#!/usr/bin/python3
"""A strict OpenAI-compatible chat-completions server for firstread's tests
(issue 14). Loopback only. It implements the documented contract that
LMDeploy, vLLM, SGLang and llama-server share (POST /v1/chat/completions,
GET /v1/models) and refuses, with HTTP 400 and an OpenAI-shaped error, any
request that is off the schema firstread promises to send:

  - Authorization: Bearer <--token> (else 401)
  - Content-Type application/json, a JSON object with only known keys
  - "model" equal to --model (else 404 "The model `x` does not exist.")
  - "messages": an optional system message (string content), then exactly one
    user message whose content is a list: one text part first (equal to
    --prompt when given), then one or more image_url parts
  - each image_url.url a data:image/png;base64 URI that decodes (strict
    base64) to a PNG, RGB 8-bit, of --expect-size WxH, whose pixels equal the
    frame of one file in --expect-dir after tools/pixel_reference/decode.py
    (pydicom, an independent implementation of the DICOM -> 8-bit path)
    resized with PIL's bicubic to that size
  - "temperature" exactly 0, "seed" an integer, "max_tokens" a positive
    integer, "stream" absent or false

Faults by scenario: --scenario-file holds a JSON object read at every request
(so a test can change it while the server runs):
  {"mode": "ok", "content": "...", "finish_reason": "stop", "served_model": "...", "delay": 0}
  {"mode": "status", "status": 429, "retry_after": "3", "message": "..."}
  {"mode": "not_json"} | {"mode": "truncated_json"} | {"mode": "no_choices"}
  {"mode": "empty_content"} | {"mode": "close"} (drops the connection)
  {"mode": "sleep", "delay": 30} (answers after the client gave up)

Every request is appended to --log as one JSON line: path, accepted (bool),
reason, open (requests open at its start, itself included; a request stops
counting before its answer is written, so this never exceeds what the client
has open), image
(WxH and the matched file), prompt, max_tokens, and the body's top-level keys.
"""
import argparse
import base64
import binascii
import importlib.util
import io
import json
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "pixel_reference", os.path.join(HERE, "..", "tools", "pixel_reference", "decode.py"))
pixel_reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pixel_reference)

KNOWN_KEYS = {"model", "messages", "temperature", "seed", "max_tokens", "stream", "top_p", "top_k", "stop",
              "chat_template", "cache_prompt", "repetition_penalty", "skip_special_tokens"}


class Rejected(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.open = 0
        self.expected = []  # (file, HxWx3 uint8 at the expected size)
        if args.expect_dir:
            w, h = (int(v) for v in args.expect_size.split("x"))
            for root, _, files in os.walk(args.expect_dir):
                for name in sorted(files):
                    if not name.endswith(".dcm"):
                        continue
                    path = os.path.join(root, name)
                    rgb, _ = pixel_reference.decode_one(path, 0)
                    img = Image.fromarray(rgb, "RGB")
                    if img.size != (w, h):
                        img = img.resize((w, h), Image.BICUBIC)
                    self.expected.append((path, np.asarray(img)))
        self.expect_wh = tuple(int(v) for v in args.expect_size.split("x")) if args.expect_size else None

    def scenario(self):
        if not self.args.scenario_file or not os.path.exists(self.args.scenario_file):
            return {"mode": "ok"}
        with open(self.args.scenario_file) as f:
            return json.load(f)

    def log(self, entry):
        if not self.args.log:
            return
        with self.lock, open(self.args.log, "a") as f:
            f.write(json.dumps(entry) + "\n")


def check_image(state, url, entry):
    prefix = "data:image/png;base64,"
    if not isinstance(url, str) or not url.startswith(prefix):
        raise Rejected(400, "image_url.url must be a data:image/png;base64 URI")
    try:
        data = base64.b64decode(url[len(prefix):], validate=True)
    except binascii.Error as e:
        raise Rejected(400, "image_url.url: invalid base64: %s" % e)
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise Rejected(400, "image_url.url does not decode to a PNG")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure is a refusal
        raise Rejected(400, "image_url.url: PNG does not decode: %s" % e)
    if img.format != "PNG" or img.mode != "RGB":
        raise Rejected(400, "image: expected an RGB PNG, got %s %s" % (img.format, img.mode))
    entry.setdefault("images", []).append("%dx%d" % img.size)
    if state.expect_wh and img.size != state.expect_wh:
        raise Rejected(400, "image: expected %dx%d, got %dx%d" % (state.expect_wh + img.size))
    if state.expected:
        got = np.asarray(img)
        for path, want in state.expected:
            if want.shape == got.shape and np.array_equal(want, got):
                entry.setdefault("matched", []).append(os.path.basename(path))
                return
        best = min(int(np.abs(want.astype(int) - got.astype(int)).max()) for _, want in state.expected
                   if want.shape == got.shape)
        raise Rejected(400, "image: pixels match none of the expected frames (closest differs by %d)" % best)


def check_request(state, body, entry):
    if not isinstance(body, dict):
        raise Rejected(400, "the body must be a JSON object")
    entry["keys"] = sorted(body.keys())
    unknown = set(body) - KNOWN_KEYS
    if unknown:
        raise Rejected(400, "unknown request keys: %s" % ", ".join(sorted(unknown)))
    if body.get("model") != state.args.model:
        raise Rejected(404, "The model `%s` does not exist." % body.get("model"))
    if body.get("stream", False) is not False:
        raise Rejected(400, "stream must be false")
    t = body.get("temperature")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t != 0:
        raise Rejected(400, "temperature must be 0 (greedy), got %r" % (t,))
    if "seed" not in body or isinstance(body["seed"], bool) or not isinstance(body["seed"], int):
        raise Rejected(400, "seed must be an integer")
    mt = body.get("max_tokens")
    if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
        raise Rejected(400, "max_tokens must be a positive integer")
    entry["max_tokens"] = mt
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Rejected(400, "messages must be a non-empty list")
    if messages[0].get("role") == "system":
        if set(messages[0]) != {"role", "content"} or not isinstance(messages[0]["content"], str):
            raise Rejected(400, "the system message must be {role, content: string}")
        entry["system"] = messages[0]["content"]
        messages = messages[1:]
    if len(messages) != 1 or not isinstance(messages[0], dict) or messages[0].get("role") != "user":
        raise Rejected(400, "expected exactly one user message after the optional system message")
    if set(messages[0]) != {"role", "content"}:
        raise Rejected(400, "the user message has keys other than role and content")
    parts = messages[0]["content"]
    if not isinstance(parts, list) or len(parts) < 2:
        raise Rejected(400, "the user message content must be a list of a text part and image parts")
    text = parts[0]
    if not isinstance(text, dict) or set(text) != {"type", "text"} or text["type"] != "text" or \
            not isinstance(text["text"], str) or not text["text"]:
        raise Rejected(400, "the first content part must be {type: text, text: non-empty string}")
    entry["prompt"] = text["text"]
    if state.args.prompt is not None and text["text"] != state.args.prompt:
        raise Rejected(400, "unexpected prompt %r" % text["text"])
    for part in parts[1:]:
        if not isinstance(part, dict) or set(part) != {"type", "image_url"} or part["type"] != "image_url" or \
                not isinstance(part["image_url"], dict) or set(part["image_url"]) != {"url"}:
            raise Rejected(400, "image parts must be {type: image_url, image_url: {url}}")
        check_image(state, part["image_url"]["url"], entry)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "openai-protocol-test/1"

    def log_message(self, fmt, *args):  # quiet; the JSON log says it all
        pass

    def release_open(self):
        # A request stops counting as open before its answer is written: the
        # client cannot have the answer (and send its next request) earlier,
        # so "open" never counts more requests than the client has open.
        if getattr(self, "_counted", False):
            self._counted = False
            with self.server.state.lock:
                self.server.state.open -= 1

    def send_json(self, status, obj, extra_headers=None, raw=None):
        data = raw if raw is not None else json.dumps(obj).encode()
        self.release_open()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, message, extra_headers=None):
        self.send_json(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}},
                       extra_headers)

    def authorized(self):
        token = self.server.state.args.token
        return not token or self.headers.get("Authorization") == "Bearer " + token

    def do_GET(self):
        state = self.server.state
        if self.path != "/v1/models":
            return self.error(404, "no route %s" % self.path)
        if not self.authorized():
            state.log({"path": self.path, "accepted": False, "reason": "bad token"})
            return self.error(401, "invalid api key")
        state.log({"path": self.path, "accepted": True})
        self.send_json(200, {"object": "list", "data": [
            {"id": state.args.model, "object": "model", "created": 0, "owned_by": "firstread-test"}]})

    def do_POST(self):
        state = self.server.state
        with state.lock:
            state.open += 1
            open_now = state.open
        self._counted = True
        entry = {"path": self.path, "open": open_now, "t": time.time()}
        try:
            self.handle_post(state, entry)
        finally:
            self.release_open()
            state.log(entry)

    def handle_post(self, state, entry):
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        if self.path != "/v1/chat/completions":
            entry.update(accepted=False, reason="path")
            return self.error(404, "no route %s" % self.path)
        if not self.authorized():
            entry.update(accepted=False, reason="bad token")
            return self.error(401, "invalid api key")
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            entry.update(accepted=False, reason="content type")
            return self.error(400, "Content-Type must be application/json")
        try:
            body = json.loads(raw)
            check_request(state, body, entry)
        except ValueError as e:
            entry.update(accepted=False, reason="body is not JSON: %s" % e)
            return self.error(400, "body is not JSON")
        except Rejected as e:
            entry.update(accepted=False, reason=str(e))
            return self.error(e.status, str(e))
        entry["accepted"] = True
        sc = state.scenario()
        mode = sc.get("mode", "ok")
        entry["mode"] = mode
        time.sleep(float(sc.get("delay", 0)))
        if mode == "status":
            headers = {"Retry-After": sc["retry_after"]} if "retry_after" in sc else None
            return self.error(int(sc["status"]), sc.get("message", "injected fault"), headers)
        if mode == "close":
            self.release_open()
            self.close_connection = True
            self.connection.shutdown(2)
            return None
        if mode == "not_json":
            return self.send_json(200, None, raw=b"<html><body>502 Bad Gateway</body></html>")
        reply = {
            "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
            "model": sc.get("served_model", state.args.model),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": sc.get("content", "No finding.")},
                         "finish_reason": sc.get("finish_reason", "stop")}],
            "usage": {"prompt_tokens": int(sc.get("prompt_tokens", 1234)),
                      "completion_tokens": int(sc.get("completion_tokens", 56)),
                      "total_tokens": int(sc.get("prompt_tokens", 1234)) + int(sc.get("completion_tokens", 56))},
        }
        if mode == "no_choices":
            reply["choices"] = []
        if mode == "empty_content":
            reply["choices"][0]["message"]["content"] = ""
        data = json.dumps(reply).encode()
        if mode == "truncated_json":
            data = data[: len(data) // 2]
        return self.send_json(200, None, raw=data)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--prompt")
    p.add_argument("--expect-dir")
    p.add_argument("--expect-size")
    p.add_argument("--scenario-file")
    p.add_argument("--log")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--ready-file", help="written once the socket listens")
    args = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.state = State(args)
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("ready\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
