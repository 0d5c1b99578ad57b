"""`parcours dmp-sim`: run the DMP test responder (connectors/dmp/simulator.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

TEST_INS_OID = "1.2.250.1.213.1.4.10"  # INS-NIR of test identities (ANS)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "dmp-sim", help="run a local DMP test responder (ITI-41, ITI-18, ITI-43, ITI-57)",
        description="A local DMP look-alike to rehearse a feed: it validates requests against "
                    "the XDS.b schemas and the CI-SIS rules, keeps documents in memory and "
                    "answers like the DMP, errors included; --seed gives a "
                    "patient example documents to consult. Endpoint: POST /dmp.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on [127.0.0.1]")
    p.add_argument("--port", type=int, default=8443, help="port [8443]")
    p.add_argument("--tls-cert", help="server certificate (PEM); enables HTTPS")
    p.add_argument("--tls-key", help="server key (PEM)")
    p.add_argument("--tls-ca", help="CA of client certificates; makes mutual TLS mandatory")
    p.add_argument("--vihf-cert", help="certificate that must have signed the VIHF assertion "
                                       "(without it the signature is not checked)")
    p.add_argument("--patient", action="append", default=[], metavar="INS",
                   help="INS with an open DMP (repeatable; none: every INS has one)")
    p.add_argument("--closed", action="append", default=[], metavar="INS",
                   help="INS whose DMP is closed (answers DMPClosed)")
    p.add_argument("--unknown", action="append", default=[], metavar="INS",
                   help="INS without a DMP (answers XDSUnknownPatientId)")
    p.add_argument("--seed", action="append", default=[], metavar="INS",
                   help="INS whose DMP holds example documents for consultation (ITI-18 / "
                        "ITI-43; repeatable; test NIR OID unless given as a CX)")
    p.add_argument("--refuse", metavar="CODE", default="",
                   help="answer every query and retrieve with this registry error code, "
                        "e.g. XDSRegistryError")
    p.add_argument("--stall", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long before each answer (rehearse timeouts) [0]")


def run(args: argparse.Namespace) -> int:
    import ssl

    import uvicorn

    from .metadata import cx_ins
    from .simulator import Simulator, SimulatorState, create_app

    state = SimulatorState(patients=set(args.patient), closed=set(args.closed),
                           unknown=set(args.unknown),
                           trusted_cert=Path(args.vihf_cert).read_bytes() if args.vihf_cert
                           else b"", refuse=args.refuse, stall_seconds=args.stall)
    seeded = sum(state.seed(ins if "^" in ins else cx_ins(ins, TEST_INS_OID))
                 for ins in args.seed)
    if seeded:  # how many, never whose: no patient data on the console
        print(f"dmp-sim: {seeded} documents seeded for {len(args.seed)} patient(s)")
    kwargs: dict = {}
    if args.tls_cert:
        kwargs.update(ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key)
        if args.tls_ca:
            kwargs.update(ssl_ca_certs=args.tls_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    scheme = "https" if args.tls_cert else "http"
    print(f"dmp-sim: {scheme}://{args.host}:{args.port}/dmp")
    uvicorn.run(create_app(Simulator(state)), host=args.host, port=args.port,
                log_level="info", **kwargs)
    return 0
