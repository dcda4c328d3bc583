"""``spinemet certs init`` and ``spinemet certs add-site``: the federation's TLS and site keys.

Registered in ``cli.py`` with ``app.add_typer(certs_app, name="certs")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

certs_app = typer.Typer(
    name="certs",
    help="Certificates and keys for a deployment: a CA, the coordinator's TLS certificate and "
         "one SuperNode authentication key pair per site (the layout is in "
         "spinemet.common.certs).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_OPTION_OF_FIELD = {"sites": "--sites", "site": "--site", "server-name": "--server-name"}


def _bad_name(exc) -> typer.BadParameter:
    """Exit 2 with the reason and the option at fault (an ``InvalidName``)."""
    return typer.BadParameter(exc.reason, param_hint=_OPTION_OF_FIELD.get(exc.field, exc.field))


@certs_app.command("init")
def init_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write ca/, coordinator/ "
                                                            "and sites/ into.")],
    server_name: Annotated[str, typer.Option(
        "--server-name", metavar="NAME[,NAME|IP...]",
        help="Host names and IP addresses sites use to reach the coordinator, comma-separated "
             "(e.g. fl.hospital.org,10.0.0.5); each becomes a DNS or IP subject "
             "alternative name of its TLS certificate. localhost and 127.0.0.1 are always "
             "added: the coordinator's own processes connect on loopback.")],
    sites: Annotated[str, typer.Option(
        metavar="A,B,C", help="Site names, comma-separated: 1-64 letters, digits, '_' or '-' "
                              "each.")],
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing PKI in OUT (the old folders are moved to "
                        "OUT/replaced-<time>/, not deleted).")] = False,
) -> None:
    """Create the CA, the coordinator's TLS certificate and a key pair per site.

    OUT/ca: the CA key and certificate; keep it offline.

    OUT/coordinator: for the SuperLink host (TLS certificate and key, CA, enrolled keys).

    OUT/sites/<site>: for that site only (its key pair and the CA certificate).

    Refuses an OUT that already holds a PKI unless --force.
    """
    from rich.table import Table

    from .certs import InvalidName, PkiError, init_pki
    from .cli import console

    try:
        pki = init_pki(out, server_name, sites, force=force)
    except InvalidName as exc:
        raise _bad_name(exc)
    except PkiError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    table = Table(title=f"federation PKI in {out}", show_header=False)
    table.add_row("CA (keep offline)", str(pki.ca.folder))
    table.add_row("coordinator", f"{pki.coordinator.folder} (TLS names: "
                                 f"{', '.join(pki.server_names)})")
    for name, site in pki.sites.items():
        table.add_row(f"site {name}", str(site.folder))
    if pki.replaced:
        table.add_row("earlier PKI moved to", str(pki.replaced))
    console.print(table)
    console.print(f"Next: move {pki.ca.folder} offline; copy {pki.coordinator.folder} to the "
                  "coordinator and give each site its own folder only (README.txt in each "
                  "says how to use it).", highlight=False)


@certs_app.command("add-site")
def add_site_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder written by `spinemet certs "
                                                            "init` (needs OUT/coordinator; "
                                                            "the CA key is not used).")],
    site: Annotated[str, typer.Option(help="New site's name: 1-64 letters, digits, '_' or "
                                           "'-'.")],
) -> None:
    """Add a site: a new key pair in OUT/sites/<site>, enrolled in OUT/coordinator.

    Signs nothing with the CA (OUT/ca may stay offline). Refuses a name that exists.
    """
    from .certs import InvalidName, PkiError, add_site, load_enrolled_keys
    from .cli import console

    try:
        files = add_site(out, site)
    except InvalidName as exc:
        raise _bad_name(exc)
    except PkiError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    key = load_enrolled_keys(files.folder.parent.parent / "coordinator")[site]
    console.print(f"site {site}: {files.folder}\nenrolled: {key.path} ({key.fingerprint})\n"
                  f"Next: give {files.folder} to {site}; on the coordinator run "
                  f"`flwr supernode register sites/{key.path.name} <connection>`.", highlight=False)
