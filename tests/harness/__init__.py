"""The project's test tooling, one home for each piece.

Every throwaway server the tests, the sweep, the benchmark and the
end-to-end tests need is started here, and nowhere else:

- ``ports``: a free loopback port, waiting for a port or a URL;
- ``mariadb``: a throwaway MariaDB server (install, start, stop, crash, resume);
- ``nginx``: an nginx instance running ``nginx/nginx.conf`` unchanged, with
  its own include files next to it;
- ``compose``: a docker compose project of ``docker-compose.yml``;
- ``images``: the stand-in images for the Nix ones, where Nix cannot run;
- ``toolchain``: production's versions of the servers (and Nix), from a Debian
  forky root built once per machine; ``procs.program`` finds them there.

Python callers import these modules; the Rust tests (``tests/api``) and Nix
call the same code through ``python3 -m harness`` (see ``__main__``).
Standard library only, so that nothing has to be installed to use it.
"""
