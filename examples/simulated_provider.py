"""A stand-in for the OpenAI and Anthropic HTTP APIs, so the examples run offline through
the real SDKs. Answers are canned; usage is computed from the request as a provider would
report it (input from the prompt's size, output up to max_tokens)."""

from __future__ import annotations

import importlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2

ANSWER = "Per-tenant budgets keep one customer's runaway loop from stopping everyone else."


def _prompt_tokens(body: dict[str, Any]) -> int:
    text = json.dumps(body.get("messages") or body.get("input") or "")
    return max(1, len(text) // 4)


def _output_tokens(body: dict[str, Any]) -> int:
    limit = (body.get("max_completion_tokens") or body.get("max_tokens")
             or body.get("max_output_tokens") or 256)
    return min(int(limit), 120)


def _sse(events: list[tuple[str | None, dict[str, Any]]], done: bool) -> httpx2.Response:
    lines = []
    for name, data in events:
        if name:
            lines.append(f"event: {name}")
        lines.append(f"data: {json.dumps(data)}\n")
    if done:
        lines.append("data: [DONE]\n")
    return httpx2.Response(200, content=("\n".join(lines) + "\n").encode(),
                           headers={"content-type": "text/event-stream"})


def openai_reply(request: httpx2.Request) -> httpx2.Response:
    body = json.loads(request.content)
    prompt, output = _prompt_tokens(body), _output_tokens(body)
    usage = {"prompt_tokens": prompt, "completion_tokens": output,
             "total_tokens": prompt + output,
             "prompt_tokens_details": {"cached_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0}}
    base = {"id": "chatcmpl-sim", "created": 1_790_000_000, "model": body["model"]}
    if not body.get("stream"):
        return httpx2.Response(200, json={**base, "object": "chat.completion", "choices": [{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": ANSWER}}], "usage": usage})
    chunks: list[tuple[str | None, dict[str, Any]]] = [(None, {
        **base, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]})
        for word in ANSWER.split()]
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append((None, {**base, "object": "chat.completion.chunk", "choices": [],
                              "usage": usage}))
    return _sse(chunks, done=True)


def anthropic_reply(request: httpx2.Request) -> httpx2.Response:
    body = json.loads(request.content)
    prompt, output = _prompt_tokens(body), _output_tokens(body)
    message = {"id": "msg_sim", "type": "message", "role": "assistant", "model": body["model"],
               "stop_reason": "end_turn", "stop_sequence": None}
    if not body.get("stream"):
        return httpx2.Response(200, json={
            **message, "content": [{"type": "text", "text": ANSWER}],
            "usage": {"input_tokens": prompt, "output_tokens": output,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}})
    events: list[tuple[str | None, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": {
            **message, "content": [], "stop_reason": None,
            "usage": {"input_tokens": prompt, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": ANSWER}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"input_tokens": prompt, "output_tokens": output}}),
        ("message_stop", {"type": "message_stop"})]
    return _sse(events, done=False)


def openai_http() -> Any:
    """The simulated provider, unless OPENAI_API_KEY asks for the real one."""
    if os.environ.get("OPENAI_API_KEY"):
        return None
    return http_client("openai", openai_reply)


def anthropic_http() -> Any:
    if os.environ.get("ANTHROPIC_API_KEY"):
        return None
    return http_client("anthropic", anthropic_reply)


def http_client(sdk: str, reply: Callable[[httpx2.Request], httpx2.Response]) -> Any:
    """A client for `sdk`'s `http_client=` whose requests `reply` answers. Recent SDKs take
    httpx2 clients; older ones (openai before 2.47, anthropic before 1.0) take httpx clients,
    whose requests and responses are carried across to `reply`."""
    base = importlib.import_module(f"{sdk}._base_client")
    if hasattr(base, "httpx2") or hasattr(base, "is_httpx2_sync_client"):
        return httpx2.Client(transport=httpx2.MockTransport(reply))
    httpx = base.httpx

    def carried(request: Any) -> Any:
        answer = reply(httpx2.Request(request.method, str(request.url),
                                      headers=request.headers.multi_items(),
                                      content=request.read()))
        return httpx.Response(answer.status_code, headers=answer.headers.multi_items(),
                              content=answer.read())

    return httpx.Client(transport=httpx.MockTransport(carried))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, as a real server's do

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        request = httpx2.Request("POST", f"http://sim{self.path}", content=self.rfile.read(length))
        reply = anthropic_reply(request) if "/messages" in self.path else openai_reply(request)
        body = reply.content
        self.send_response(reply.status_code)
        self.send_header("content-type", reply.headers["content-type"])
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve() -> Iterator[str]:
    """The simulated provider on a loopback port for the block's duration; yields its base
    URL (point OPENAI_BASE_URL at base + "/v1" and ANTHROPIC_BASE_URL at base)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
