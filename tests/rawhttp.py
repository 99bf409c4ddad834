"""Raw HTTP over a socket, for tests that send what no client library would: hostile request
bytes in, whole responses (or a close) out. Shared by test_hostile and test_adversary."""

import socket


class Raw:
    """A raw client connection that reads whole responses off a byte stream."""

    def __init__(self, port: int, timeout: float = 6.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.eof = False
        self.head = b""  # the last response's status line and headers, as they came

    def send(self, data: bytes) -> bool:
        """False when the master closed before taking it all (it may have answered already)."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def shut(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:  # the master closed first
            pass

    def _fill(self) -> bool:
        try:
            more = self.sock.recv(1 << 16)
        except ConnectionResetError:
            more = b""
        if not more:
            self.eof = True
        self.buf += more
        return bool(more)

    def response(self, head_request: bool = False) -> tuple[int, dict[str, str], bytes] | None:
        """The next response (status, headers, body), or None if the master closed first."""
        while b"\r\n\r\n" not in self.buf:
            if self.eof or not self._fill():
                assert not self.buf, f"a partial answer, then a close: {self.buf[:200]!r}"
                return None
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 "), f"not an HTTP answer: {head[:200]!r}"
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_request else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            assert self._fill(), "the master closed mid-body"
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed(self) -> bool:
        """Whether the master closes the connection (within the socket timeout)."""
        try:
            while self._fill():
                pass
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def raw_status(port: int, data: bytes, timeout: float = 6.0) -> int | None:
    """The status of the one answer to `data` on a new connection (None: closed first)."""
    c = Raw(port, timeout)
    try:
        c.send(data)
        answer = c.response()
        return answer[0] if answer else None
    finally:
        c.close()
