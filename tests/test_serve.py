"""`sharpkd serve` itself (waitress in front of the app): what reaches the server before the app does."""

import json
import socket
import time
import urllib.request
from urllib.parse import urlsplit

import pytest

from conftest import running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    # a 1 MB upload limit keeps the "far over the limit" bodies small
    with running_server("--model", "unsharp", "--max-upload-mb", "1") as url:
        yield url


def raw(url: str, request: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send raw bytes, read the whole answer; (status, headers, body)."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_body_far_over_the_limit_is_refused_as_json_before_it_is_sent(server):
    # 200 MB declared against a 1 MB limit: waitress stops it at the headers, before any body arrives
    req = (b"POST /api/sharpen HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
           b"Content-Length: 200000000\r\n\r\n")
    status, headers, body = raw(server, req)
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff" and "frame-ancestors 'none'" in headers[
        "content-security-policy"]
    doc = json.loads(body)
    assert doc["status"] == 413 and "Too Large" in doc["error"]


def test_malformed_request_is_a_json_400(server):
    status, headers, body = raw(server, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ten\r\n\r\n")
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["status"] == 400


def test_health_check_answers_while_many_half_sent_requests_hang(server):
    u = urlsplit(server)
    idle = []
    try:
        for _ in range(110):  # more than waitress's default connection limit (100)
            s = socket.create_connection((u.hostname, u.port), timeout=5)
            s.sendall(b"POST /api/sharpen HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
            idle.append(s)
        time.sleep(0.5)
        with urllib.request.urlopen(server + "/healthz", timeout=10) as r:
            assert r.status == 200 and json.load(r)["status"] == "ok"
    finally:
        for s in idle:
            s.close()
