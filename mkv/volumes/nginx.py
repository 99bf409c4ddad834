"""The volume server launcher: write an nginx config for a data directory and run stock nginx.

`mkv volume DIR` serves the files under DIR with GET/HEAD, takes WebDAV PUT and DELETE and
lists directories as JSON. Nothing of ours runs per request; this module only renders the config
and stays in the foreground as nginx's parent so that signals and exit codes behave like any
other foreground server.

nginx's own files live in `DIR/.mkv/` (config, pid, temp dirs): on the same filesystem as the
data, so a PUT lands by rename, and under a dot-name, which autoindex never lists.
"""

import ctypes
import errno
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import FrameType

STATE_DIR = ".mkv"
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
DEBIAN_NGINX = "/usr/sbin/nginx"  # not on a normal user's PATH on Debian
INSTALL_HINT = "install it with: apt-get install -y nginx"
OPEN_FILES = 16384  # worker_connections plus an open file per connection, with room to spare
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None  # before any fork


def render_config(data_dir: Path, port: int, *, ipv6: bool = False, user: str | None = None,
                  secret: str = "", signed_reads: bool = False) -> str:
    """The nginx.conf text for a volume serving data_dir on port (pure).

    Every path is relative to nginx's prefix, `data_dir/.mkv` (given to nginx with -p), so no
    character in data_dir needs quoting. ipv6 adds a `[::]` listener; user sets the worker user
    (needed when nginx starts as root, or the workers run as nobody).

    With a secret, PUT and DELETE need the master's `X-Mkv-Secret` header (403 otherwise);
    with signed_reads, so do GET and HEAD unless their URL carries a valid secure_link
    signature (see mkv/volumes/security.py).

    Raises ValueError if data_dir holds a `$`: nginx expands the prefix into `root` and would read
    it as a variable, and nginx has no way to escape one.
    """
    if "$" in str(data_dir):
        raise ValueError(f"{data_dir}: nginx cannot serve a path containing '$'")
    listen_opts = f"{port} reuseport backlog=4096 default_server"
    temp_paths = "\n".join(f"    {name}_temp_path tmp/{name};" for name in TEMP_DIRS)
    lines = [
        f"# Written by `mkv volume` for {json.dumps(str(data_dir))}; rewritten on every start.",
        f"# Paths are relative to the prefix {STATE_DIR}/ inside that directory (nginx -p).",
        "daemon off;",
        *([f"user {user};"] if user else []),
        "worker_processes auto;",
        # SIGQUIT waits for requests in flight (a replica being written); this bounds the wait.
        "worker_shutdown_timeout 5s;",
        "pid nginx.pid;",
        "lock_file nginx.lock;",
        "error_log stderr;",
        "",
        "events {",
        "    worker_connections 4096;",
        "    multi_accept on;",
        "}",
        "",
        "http {",
        "    access_log off;",
        "    log_not_found off;  # a HEAD check of a missing replica is not an error",
        "    server_tokens off;",
        "    types {}",
        "    default_type application/octet-stream;",
        "    sendfile on;",
        "    tcp_nopush on;",
        # The master keeps connections open and HEAD-checks over them at tens of thousands/s.
        "    keepalive_timeout 75s;",
        "    keepalive_requests 100000;",
        "    reset_timedout_connection on;",
        # No open_file_cache: a HEAD right after a DELETE must already say 404.
        temp_paths,
        "",
        *_access_rules(secret, signed_reads),
        "    server {",
        f"        listen {listen_opts};",
        *([f"        listen [::]:{listen_opts};"] if ipv6 else []),
        "        root ..;",
        "",
        "        location / {",
        # MOVE: S3 writes land under a name of their own, then are renamed into place
        "            dav_methods PUT DELETE MOVE;",
        "            dav_access user:rw group:r all:r;",
        "            create_full_put_path on;",
        "            client_max_body_size 0;",
        "            autoindex on;",
        "            autoindex_format json;",
        *(["            secure_link $arg_md5,$arg_expires;",
           f'            secure_link_md5 "$secure_link_expires$uri {secret}";']
          if secret and signed_reads else []),
        *(["            if ($mkv_denied) {", "                return 403;", "            }"]
          if secret else []),
        "        }",
        "",
        # autoindex hides it, but a GET, PUT or DELETE could still reach our own files.
        f"        location ^~ /{STATE_DIR} {{",
        "            return 404;",
        "        }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _access_rules(secret: str, signed_reads: bool) -> list[str]:
    """`$mkv_denied` is 1 for a request the volume must refuse: one without the master's
    secret that writes, or (signed_reads) that reads without a valid signature."""
    if not secret:
        return []
    reads = '"~^0:(GET|HEAD):1$" 0;' if signed_reads else '"~^0:(GET|HEAD):" 0;'
    return [
        "    map $http_x_mkv_secret $mkv_from_master {",
        "        default 0;",
        f'        "{secret}" 1;',
        "    }",
        "    map $mkv_from_master:$request_method:$secure_link $mkv_denied {",
        "        default 1;",
        '        "~^1:" 0;',
        f"        {reads}",
        "    }",
        "",
    ]


def find_nginx() -> str | None:
    """The nginx binary: $MKV_NGINX if set (a name or a path), else nginx on PATH or Debian's."""
    wanted = os.environ.get("MKV_NGINX")
    if wanted:
        return shutil.which(wanted)
    return shutil.which("nginx") or (DEBIAN_NGINX if os.access(DEBIAN_NGINX, os.X_OK) else None)


class PortInUse(Exception):
    pass


def probe_port(port: int) -> bool:
    """Raise PortInUse if something listens on port; return whether IPv6 sockets work.

    nginx listens with reuseport, and Linux lets a second reuseport socket of the same user bind
    a port already in use: two volumes on one port would both start and split the requests.
    A plain bind (like any other server's) fails instead, so try one first.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT, as nginx does
        try:
            s.bind(("0.0.0.0", port))
        except OSError as e:
            raise PortInUse(str(e)) from None
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(("::", port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(str(e)) from None
        return False  # IPv6 is disabled or absent here
    return True


def _raise_open_files_limit() -> None:
    """Let nginx (which inherits our limits) use worker_connections without running out of fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM nginx if we are killed (even by SIGKILL)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def prepare(data_dir: Path, port: int, secret: str = "", signed_reads: bool = False) -> Path:
    """Create data_dir's state dirs and write its nginx config; return the config's path."""
    user = "root" if os.geteuid() == 0 else None  # as root nginx would run workers as nobody
    text = render_config(data_dir, port, ipv6=probe_port(port), user=user, secret=secret,
                         signed_reads=signed_reads)
    state = data_dir / STATE_DIR
    for name in TEMP_DIRS:
        (state / "tmp" / name).mkdir(parents=True, exist_ok=True)
    conf = state / "nginx.conf"
    partial = state / "nginx.conf.partial"
    partial.touch(mode=0o600)  # it may hold the secret
    partial.chmod(0o600)
    partial.write_text(text)
    partial.replace(conf)  # a crash never leaves half a config
    return conf


def run_volume(data_dir: str, port: int, secret: str = "", signed_reads: bool = False) -> int:
    """Serve data_dir on port with nginx in the foreground until it exits or we are signalled.

    The first SIGTERM/SIGINT/SIGHUP asks nginx for a graceful stop (SIGQUIT), a second one for a
    fast stop (SIGTERM). Returns nginx's exit code (128 + signal if it was killed).
    """
    nginx = find_nginx()
    if nginx is None:
        where = (f"MKV_NGINX={os.environ['MKV_NGINX']} not found" if os.environ.get("MKV_NGINX")
                 else f"not on PATH nor at {DEBIAN_NGINX}")
        print(f"mkv volume: nginx is not installed ({where}); {INSTALL_HINT}", file=sys.stderr)
        return 2
    root = Path(data_dir).absolute()
    try:
        conf = prepare(root, port, secret, signed_reads)
    except PortInUse as e:
        print(f"mkv volume: port {port} is in use ({e})", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mkv volume: cannot prepare {root}: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"mkv volume: {e}", file=sys.stderr)
        return 2
    _raise_open_files_limit()
    cmd = [nginx, "-p", f"{root / STATE_DIR}/", "-c", str(conf), "-e", "stderr"]

    proc: subprocess.Popen[bytes] | None = None
    stops = 0

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stops
        stops += 1
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGQUIT if stops == 1 else signal.SIGTERM)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, forward) for sig in handled}
    try:
        # Own process group: a terminal's Ctrl-C reaches only us, and we stop nginx once.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, process_group=0,
                                preexec_fn=_die_with_parent)
        if stops:  # signalled while nginx was starting
            proc.send_signal(signal.SIGQUIT)
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
