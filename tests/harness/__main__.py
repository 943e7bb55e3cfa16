"""The harness for callers that are not Python (the Rust tests, Nix).

    python3 -m harness mariadb [--port N] [--no-start]
    python3 -m harness nginx --upstream HOST:PORT [--file NAME=PATH]...
    python3 -m harness nginx-check [--file NAME=PATH]...
    python3 -m harness free-port
    python3 -m harness toolchain     # build (or find) the forky root; print its bin directory
    python3 -m harness versions      # the servers' versions the harness runs now, one line

``mariadb`` and ``nginx`` print one JSON line describing the server once it
is ready, then obey commands on stdin, one per line, each answered by a JSON
line: mariadb ``stop`` (clean shutdown), ``crash`` (SIGKILL), ``pause``
(SIGSTOP), ``unpause``, ``start``. End of input (the caller is done, or died:
its end of the pipe closes either way) stops the server and removes its
files. Errors go to stderr with exit status 1.
"""

import argparse
import json
import sys
from pathlib import Path

from . import mariadb, nginx, ports, toolchain


def _say(**fields):
    print(json.dumps(fields), flush=True)


def _files(pairs):
    files = {}
    for pair in pairs or ():
        name, _, path = pair.partition("=")
        files[name] = Path(path).read_text()
    return files


def serve_mariadb(args):
    server = mariadb.MariaDB.prepare(port=args.port)
    try:
        if not args.no_start:
            server.resume()
        _say(port=server.port, admin_url=server.admin_url, dir=str(server.dir), running=server.running())
        commands = {
            "stop": server.stop,
            "crash": server.crash,
            "start": server.resume,
            "pause": server.pause,
            "unpause": server.unpause,
        }
        for line in sys.stdin:
            command = line.strip()
            if not command:
                continue
            try:
                commands[command]()
                _say(ok=command, running=server.running())
            except Exception as e:  # reported to the caller, who decides
                _say(error=f"{command}: {e}", log=server.log()[-4000:])
    finally:
        server.close()


def serve_nginx(args):
    proxy = nginx.Nginx.start(args.upstream, files=_files(args.file), access_log=not args.no_access_log)
    try:
        _say(**proxy.describe())
        for _ in sys.stdin:
            pass
    finally:
        proxy.close(keep_files=args.keep_files)


def main():
    parser = argparse.ArgumentParser(prog="python3 -m harness")
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("mariadb")
    m.add_argument("--port", type=int)
    m.add_argument("--no-start", action="store_true")
    n = sub.add_parser("nginx")
    n.add_argument("--upstream", action="append", required=True)
    n.add_argument("--file", action="append", metavar="NAME=PATH")
    n.add_argument("--no-access-log", action="store_true")
    n.add_argument("--keep-files", action="store_true")
    c = sub.add_parser("nginx-check")
    c.add_argument("--file", action="append", metavar="NAME=PATH")
    sub.add_parser("free-port")
    sub.add_parser("toolchain")
    sub.add_parser("versions")
    args = parser.parse_args()
    try:
        if args.what == "mariadb":
            serve_mariadb(args)
        elif args.what == "nginx":
            serve_nginx(args)
        elif args.what == "nginx-check":
            result = nginx.check(_files(args.file))
            sys.stderr.write(result.stderr)
            sys.exit(result.returncode)
        elif args.what == "toolchain":
            print(toolchain.build() / "bin")
        elif args.what == "versions":
            print(toolchain.describe())
        else:
            print(ports.free_port())
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        print(f"harness {args.what}: {e}", file=sys.stderr)
        sys.exit(1)


main()
