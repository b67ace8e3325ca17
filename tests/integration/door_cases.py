#!/usr/bin/env python3
"""Hostile and unlucky clients at the front door, on raw sockets.

Usage: door_cases.py HOST PORT STUB_URL

The daemon must run with limits { max_body_bytes: 65536, header_timeout_ms:
1500, body_min_bytes_per_s: 1000, max_connections_per_ip: 16 } and the
bundled stub as its upstream. Prints one "ok - ..." / "not ok - ..." line
per check (the shell test counts them) and exits 1 on any failure.

The table CASES is meant to grow: each row is (name, bytes to send,
expected statuses in order, whether the daemon must close the connection).
After every row the daemon must still answer GET /health on a new
connection.
"""
import json
import socket
import sys
import threading
import time
import urllib.request

HOST, PORT, STUB = sys.argv[1], int(sys.argv[2]), sys.argv[3]
FAILED = 0


def report(ok, name, detail=""):
    global FAILED
    if ok:
        print(f"ok - {name}")
    else:
        FAILED += 1
        print(f"not ok - {name}" + (f": {detail}" if detail else ""))


def connect():
    s = socket.create_connection((HOST, PORT), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_until_close(s, timeout=10.0):
    """Everything the server sends until it closes (or timeout)."""
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return data, True
            data += d
    except (socket.timeout, TimeoutError):
        return data, False
    except ConnectionResetError:
        return data, True


def parse_responses(data):
    """Splits a byte stream into (status, headers dict, body) responses."""
    out = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            break
        head = data[:end].decode("latin-1").split("\r\n")
        data = data[end + 4:]
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            break
        status = int(parts[1])
        hdrs = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if status == 100:
            out.append((status, hdrs, b""))
            continue
        if "content-length" in hdrs:
            n = int(hdrs["content-length"])
            body, data = data[:n], data[n:]
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                nl = data.find(b"\r\n")
                size = int(data[:nl].split(b";")[0], 16)
                data = data[nl + 2:]
                if size == 0:
                    data = data[data.find(b"\r\n") + 2:]
                    break
                body += data[:size]
                data = data[size + 2:]
        else:
            body, data = data, b""
        out.append((status, hdrs, body))
    return out


def read_responses(s, count, timeout=10.0):
    """Reads until `count` complete responses arrived (or close/timeout)."""
    s.settimeout(timeout)
    data = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = parse_responses(data)
        if len([r for r in got if r[0] != 100]) >= count:
            return got, False
        try:
            d = s.recv(65536)
        except (socket.timeout, TimeoutError):
            break
        except ConnectionResetError:
            return parse_responses(data), True
        if not d:
            return parse_responses(data), True
        data += d
    return parse_responses(data), False


def answered(s):
    """Whether the daemon has sent something (or closed), without blocking."""
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) is not None
    except BlockingIOError:
        return False
    except OSError:
        return True


def health_ok():
    try:
        with urllib.request.urlopen(f"http://{HOST}:{PORT}/health", timeout=5) as r:
            return r.status == 200
    except Exception:
        return False


def error_shape(body):
    try:
        e = json.loads(body)["error"]
        return all(k in e for k in ("message", "type", "param", "code"))
    except Exception:
        return False


CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}]}).encode()


def post(body=CHAT, extra=b"", path=b"/v1/chat/completions"):
    return (b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" +
            extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def chunked(body, size):
    out = b""
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return out + b"0\r\n\r\n"


TLS_HELLO = bytes.fromhex("16030100a5010000a10303") + bytes(range(32)) + b"\x00\x02\x13\x01\x01\x00"
BIG = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * (3 << 20)}]}).encode()

# (name, bytes, expected statuses in order, the daemon closes afterwards)
CASES = [
    ("Content-Length with Transfer-Encoding",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", [400], True),
    ("two different Content-Length headers",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
     b"Content-Length: 6\r\n\r\nhello!", [400], True),
    ("Transfer-Encoding with a space before the colon",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n"
     b"5\r\nhello\r\n0\r\n\r\n", [400], True),
    ("a folded header line",
     b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  continued\r\n\r\n", [400], True),
    ("Transfer-Encoding other than chunked",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", [501],
     True),
    ("Content-Length that is not a number",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 1e3\r\n\r\n", [400], True),
    ("a bare CR inside a header",
     b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n", [400], True),
    ("a NUL byte in the head", b"GET /health HTTP/1.1\r\nHost: t\x00\r\n\r\n", [400], True),
    ("HTTP/1.1 without Host", b"GET /health HTTP/1.1\r\n\r\n", [400], True),
    ("HTTP/2.0 request line", b"GET /health HTTP/2.0\r\nHost: t\r\n\r\n", [505], True),
    ("a TLS ClientHello on the plain port", TLS_HELLO, [400], True),
    ("binary garbage", b"\x00\x01\x02\xff\xfe" * 20, [400], True),
    ("a head over max_header_bytes",
     b"GET /health HTTP/1.1\r\nHost: t\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n", [431],
     True),
    ("malformed chunk size",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"zz\r\nhello\r\n0\r\n\r\n", [400], True),
    ("chunk without its CRLF",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhelloXX0\r\n\r\n", [400], True),
    ("a 3 MB chunked body over max_body_bytes",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n" + chunked(BIG, 8192), [413], True),
    ("a 3 MB Content-Length body over max_body_bytes", post(BIG), [413], True),
    ("a chunked body within the limit is served",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked(CHAT, 7), [200], True),
    ("a body of 20,000 one-byte chunks (size lines across read-buffer ends)",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
     chunked(json.dumps({"model": "m", "messages": [{"role": "user", "content": "y" * 20000}]})
             .encode(), 1), [200], True),
    ("pipelined /health, /metrics, 404, 405 answered in order, kept alive",
     b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"
     b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\nDELETE /health HTTP/1.1\r\nHost: t\r\n\r\n",
     [200, 200, 404, 405], False),
    ("a 404 for a POST with a small body keeps the connection",
     post(CHAT, path=b"/nope"), [404], False),
    ("a 405 for a PUT with a small body keeps the connection",
     post(CHAT).replace(b"POST ", b"PUT ", 1), [405], False),
    ("413 on an announced body over the limit with Expect: 100-continue, no 100",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
     b"Content-Length: 9000000\r\n\r\n", [413], True),
    ("a GET with a small body: answered, the body dropped, the connection kept",
     b"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789", [200], False),
    ("pipelined chat requests answered in order",
     post(CHAT) + post(b"{bad json") + post(CHAT), [200, 400, 200], False),
    ("empty lines before a request are allowed",
     b"\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\n", [200], False),
    ("HTTP/1.0 closes after its answer", b"GET /health HTTP/1.0\r\n\r\n", [200], True),
    ("Connection: close is honoured",
     b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", [200], True),
]


def run_case(name, data, want, closes):
    s = connect()
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon answered and closed while we still sent
    t0 = time.time()
    got, closed = read_responses(s, len(want), timeout=5)
    statuses = [r[0] for r in got if r[0] != 100]
    ok = statuses == want
    detail = f"statuses {statuses}, wanted {want}"
    if ok and closes and not closed:
        rest, closed = read_until_close(s, timeout=3)
        if rest:
            ok, detail = False, f"more bytes after the answer: {rest[:80]!r}"
        elif not closed:
            ok, detail = False, "the connection stayed open"
    if ok and not closes:
        for st, h, _ in got:
            if h.get("connection", "").lower() == "close":
                ok, detail = False, f"{st} said Connection: close"
        # Still usable: one more request on the same connection.
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        more, _ = read_responses(s, 1, timeout=5)
        if not more or more[0][0] != 200:
            ok, detail = False, "the kept-alive connection did not serve another request"
    if ok:
        for st, h, body in got:
            if st >= 400 and not error_shape(body):
                ok, detail = False, f"{st} body is not the OpenAI error shape: {body[:120]!r}"
    elapsed = time.time() - t0
    if ok and elapsed > 3:
        ok, detail = False, f"took {elapsed:.1f} s"
    s.close()
    report(ok, f"{name} -> {want}{' and close' if closes else ''}", detail)
    report(health_ok(), f"still serving after: {name}")


for case in CASES:
    run_case(*case)

# ---- half-close after a complete request, with other connections open -----
idle = [connect() for _ in range(3)]
n_answered = 0
for i in range(10):
    s = connect()
    s.sendall(post(json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                               "stub": {"delay_ms": 50 * (i % 3)}}).encode()))
    s.shutdown(socket.SHUT_WR)
    data, _ = read_until_close(s, timeout=10)
    got = parse_responses(data)
    if got and got[0][0] == 200 and b"choices" in got[0][2]:
        n_answered += 1
    s.close()
report(n_answered == 10,
       f"half-closed clients with other connections open: {n_answered} of 10 answered")
for s in idle:
    s.close()

# ---- review regressions -----------------------------------------------------------
# An early answer whose announced body never comes: the connection goes at
# the body deadline (it once freed the answer twice and crashed).
s = connect()
t0 = time.time()
s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")
data, closed = read_until_close(s, timeout=6)
got = parse_responses(data)
report([r[0] for r in got] == [200] and closed and time.time() - t0 < 4,
       f"an answered request whose body never comes: 200, closed at the body deadline "
       f"({time.time() - t0:.2f} s, {[r[0] for r in got]})")
s.close()
report(health_ok(), "still serving after it")

# Requests pipelined before a half-close are all answered.
s = connect()
s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n" * 2 + b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
s.shutdown(socket.SHUT_WR)
data, closed = read_until_close(s, timeout=5)
report([r[0] for r in parse_responses(data)] == [200, 200, 200] and closed,
       f"three requests pipelined before a half-close: all answered, then closed "
       f"({[r[0] for r in parse_responses(data)]})")
s.close()

# The head deadline of a new connection counts from the accept.
s = connect()
t0 = time.time()
time.sleep(1.0)
try:
    for b in b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100:
        s.send(bytes([b]))
        time.sleep(0.1)
        if answered(s) or time.time() - t0 > 6:
            break
except (BrokenPipeError, ConnectionResetError):
    pass
cut = time.time() - t0
raw, _ = read_until_close(s, timeout=3)
got = parse_responses(raw)
report(got and got[0][0] == 408 and cut < 2.2,
       f"a new connection silent for 1 s, then trickling: cut 1.5 s after the accept ({cut:.2f} s)")
report(raw.count(b"\r\nConnection: close\r\n") == 1,
       f"the 408 says Connection: close once ({raw.count(b'Connection: close')} times)")
s.close()

# ---- Expect: 100-continue -------------------------------------------------------
s = connect()
s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
          b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(CHAT))
s.settimeout(3)
saw_continue = s.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
s.sendall(CHAT)
got, _ = read_responses(s, 1, timeout=5)
report(saw_continue and [r[0] for r in got if r[0] != 100] == [200],
       "Expect: 100-continue gets 100 Continue, then the answer")
s.close()

# ---- the head deadline is for the whole head, not reset by each byte ---------
s = connect()
t0 = time.time()
head = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 200
status = None

try:
    for b in head:
        s.send(bytes([b]))
        time.sleep(0.1)
        if answered(s) or time.time() - t0 > 6:
            break
except (BrokenPipeError, ConnectionResetError):
    pass
got, _ = read_responses(s, 1, timeout=3)
cut = time.time() - t0
report(got and got[0][0] == 408 and 1.4 <= cut <= 2.2,
       f"a head trickled a byte per 100 ms is cut at the 1.5 s head deadline "
       f"({cut:.2f} s, {[r[0] for r in got]})")
s.close()

# ---- a body slower than body_min_bytes_per_s ---------------------------------------
s = connect()
t0 = time.time()
s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
          b"Content-Length: 60000\r\n\r\n")
try:
    while time.time() - t0 < 8 and not answered(s):
        s.send(b"x" * 10)
        time.sleep(0.1)
except (BrokenPipeError, ConnectionResetError):
    pass
got, _ = read_responses(s, 1, timeout=3)
cut = time.time() - t0
report(got and got[0][0] == 408 and cut < 2.5,
       f"a body at 100 B/s against a 1000 B/s minimum is cut ({cut:.2f} s, "
       f"{[r[0] for r in got]})")
s.close()

# ---- connections per address ---------------------------------------------------------
held = [connect() for _ in range(16)]
for h in held:  # answered: the daemon has counted it
    h.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    read_responses(h, 1, timeout=5)
s = connect()
data, closed = read_until_close(s, timeout=3)
got = parse_responses(data)
report(got and got[0][0] == 429 and closed and error_shape(got[0][2]),
       f"the 17th connection from one address gets 429 ({[r[0] for r in got]})")
s.close()
for h in held:
    h.close()
deadline = time.time() + 5
while time.time() < deadline and not health_ok():
    time.sleep(0.05)
report(health_ok(), "served again once they closed")

# ---- mutations: random damage to valid requests, from a fixed seed -------------
# Whatever the bytes, the daemon answers with a well-formed HTTP response (or
# closes), never hangs a connection past the head deadline, and keeps serving.
import random

rng = random.Random(7731)
SEEDS = [post(CHAT), b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n",
         b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
         + chunked(CHAT, 9)]
JUNK = [b"\r", b"\n", b"\r\n", b" ", b":", b"\x00", b"\xff", b"0", b"-1", b"99999999999999999999",
        b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b"\t", b";", b"HTTP/1.1"]
bad = []
for i in range(300):
    data = bytearray(rng.choice(SEEDS))
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        op, pos = rng.randint(0, 3), rng.randrange(len(data))
        if op == 0:
            data[pos] = rng.randrange(256)
        elif op == 1:
            del data[pos:pos + rng.randint(1, 8)]
        elif op == 2:
            data[pos:pos] = rng.choice(JUNK)
        else:
            data = data[:pos]
    s = connect()
    try:
        s.sendall(bytes(data))
        s.shutdown(socket.SHUT_WR)  # no more bytes: an incomplete request ends here
    except OSError:
        pass
    t0 = time.time()
    out, closed = read_until_close(s, timeout=4)
    s.close()
    if not closed:
        bad.append((i, "not closed within 4 s", bytes(data[:60])))
    elif out and not out.startswith(b"HTTP/1.1 "):
        bad.append((i, f"not an HTTP answer: {out[:40]!r}", bytes(data[:60])))
    elif out and not parse_responses(out):
        bad.append((i, "malformed answer", bytes(data[:60])))
report(not bad, f"300 mutated requests: every one answered in HTTP or closed within 4 s "
       f"({len(bad)} bad{': ' + repr(bad[:2]) if bad else ''})")
report(health_ok(), "still serving after the mutations")

print(f"door_cases: {FAILED} failed")
sys.exit(1 if FAILED else 0)
