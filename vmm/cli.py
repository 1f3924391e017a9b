"""The ``vmm`` command: daemon, guest, run.

``vmm daemon`` follows the vhost-user back-end program conventions (reference/ecosystem.md
§1.5): ``--socket-path`` or ``--fd``, ``--print-capabilities``, no self-daemonizing,
``--pidfile`` written once the socket listens, prompt exit on SIGTERM, non-zero exit with a
message when start-up fails.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import importlib
import json
import logging
import os
import socket
import stat
import sys
from collections.abc import Sequence

from vmm import __version__
from vmm.config import ConfigError, HelpRequested
from vmm.devidmap import add_config_options, load_daemon_config

log = logging.getLogger("vmm")

CAPABILITIES = {
    "type": "viommu",
    "features": ["socket-path", "fd", "device", "pidfile", "sandbox", "print-capabilities"],
}


class StartError(Exception):
    """The daemon cannot start; the message says why."""


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="vmm[%(process)d] %(levelname)s %(name)s: %(message)s")


def bind_listener(path: str) -> socket.socket:
    """A listening socket at ``path``; a stale socket file is replaced, a live one refused."""
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise StartError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: a leftover of an earlier run
        else:
            raise StartError(f"{path}: another daemon is listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise StartError(f"cannot listen on {path}: {exc.strerror}") from None
    return sock


def socket_from_fd(fd: int) -> tuple[socket.socket | None, socket.socket | None]:
    """(listener, connected) for an inherited fd: a listening socket or one guest's socket."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise StartError(f"--fd {fd}: {exc.strerror}") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise StartError(f"--fd {fd} is not a Unix stream socket")
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return sock, None
    return None, sock


def daemon_main(args: argparse.Namespace) -> int:
    if args.print_capabilities:
        print(json.dumps(CAPABILITIES))
        return 0
    try:
        config = load_daemon_config(args)
    except HelpRequested as req:
        print(req.text)
        return 0
    except ConfigError as exc:
        print(f"vmm daemon: {exc}", file=sys.stderr)
        return 1
    if (args.socket_path is None) == (args.fd is None):
        print("vmm daemon: exactly one of --socket-path and --fd is required", file=sys.stderr)
        return 1
    if not config.devices:
        print("vmm daemon: no --device given (try --device help)", file=sys.stderr)
        return 1
    if args.record:
        from vmm.record import check_pattern

        problem = check_pattern(args.record)
        if problem:
            print(f"vmm daemon: --record {args.record}: {problem}", file=sys.stderr)
            return 1
    _setup_logging(args.verbose)
    listener: socket.socket | None = None
    connected: socket.socket | None = None
    created_path: str | None = None
    try:
        if args.socket_path is not None:
            listener = bind_listener(args.socket_path)
            created_path = args.socket_path
        else:
            listener, connected = socket_from_fd(args.fd)
        if args.sandbox:
            from vmm.sandbox import SandboxError, enter_network_sandbox

            try:
                links = enter_network_sandbox()
            except SandboxError as exc:
                raise StartError(f"--sandbox: {exc}") from None
            log.info("sandbox: network namespace with %s", ", ".join(links))
    except StartError as exc:
        print(f"vmm daemon: {exc}", file=sys.stderr)
        if created_path:
            with contextlib.suppress(OSError):
                os.unlink(created_path)
        return 1

    import trio

    from vmm.daemon import remove_quietly, run_daemon

    try:
        trio.run(functools.partial(run_daemon, record=args.record),
                 listener, connected, config, args.pidfile)
    except KeyboardInterrupt:
        pass
    finally:
        remove_quietly(created_path)
        remove_quietly(args.pidfile)
        for sock in (listener, connected):
            if sock is not None:
                sock.close()
    return 0


def guest_main(args: argparse.Namespace) -> int:
    import trio

    from vmm.testguest import print_report, run_test_guest

    try:
        report = trio.run(run_test_guest, args.socket_path)
    except (OSError, EOFError) as exc:
        print(f"vmm guest: {exc}", file=sys.stderr)
        return 1
    print_report(report, as_json=args.json)
    return 0 if report.ok else 1


def run_main(args: argparse.Namespace) -> int:
    from vmm.testguest import print_report, run_with_daemon

    try:
        report = run_with_daemon(args.device or ["smmuv3", "vtd"])
    except (OSError, EOFError, RuntimeError) as exc:
        print(f"vmm run: {exc}", file=sys.stderr)
        return 1
    print_report(report, as_json=args.json)
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmm", description="viommu: emulated SMMUv3 / VT-d / PV-IOMMU device models")
    parser.add_argument("-V", "--version", action="version", version=f"vmm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("daemon", help="run the device-model daemon")
    d.add_argument("--socket-path", metavar="PATH", help="listen on this Unix socket")
    d.add_argument("--fd", type=int, metavar="N",
                   help="use inherited socket N (listening, or one guest's connection)")
    d.add_argument("--print-capabilities", action="store_true",
                   help="print the back-end capabilities as JSON and exit")
    d.add_argument("--device", action="append", metavar="MODEL,key=value,...",
                   help="add an IOMMU model (QEMU keyval; 'help' and 'MODEL,help' list them)")
    d.add_argument("--pidfile", metavar="PATH", help="write the pid here once listening")
    add_config_options(d)  # --config FILE, the ID map, topology, DMA masters
    d.add_argument("--record", metavar="FILE",
                   help="record each guest connection as a trace (vmm replay FILE); {conn} or "
                        "%%d in FILE is the connection number; .gz/.zst compress")
    d.add_argument("--sandbox", action="store_true",
                   help="move into a private network namespace with only loopback")
    d.add_argument("-v", "--verbose", action="count", default=0)
    d.set_defaults(func=daemon_main)

    g = sub.add_parser("guest", help="attach the built-in test guest to a running daemon")
    g.add_argument("--socket-path", metavar="PATH", required=True)
    g.add_argument("--json", action="store_true", help="print the report as JSON")
    g.set_defaults(func=guest_main)

    r = sub.add_parser("run", help="start a daemon, attach the built-in test guest, report")
    r.add_argument("--device", action="append", metavar="MODEL,key=value,...",
                   help="models to start (default: one smmuv3 and one vtd)")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.set_defaults(func=run_main)

    # Commands that live in their own modules: each module has configure(parser) and
    # main(args) -> int, and is imported only when the command line is built.
    for name, module, text in PLUGIN_COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not exc.name or not module.startswith(exc.name):
                raise  # a real import error inside the module
            continue
        p = sub.add_parser(name, help=text)
        mod.configure(p)
        p.set_defaults(func=mod.main)
    return parser


PLUGIN_COMMANDS = (
    ("replay", "vmm.replay", "replay a recorded trace, a qtest script or a QEMU trace log"),
    ("fuzz", "vmm.fuzz.cli", "fuzz a model's register interface or the socket front door"),
    ("guest-config", "vmm.guestconfig",
     "emit the guest's firmware description (device tree nodes, ACPI DMAR)"),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        code = errno.EPIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
