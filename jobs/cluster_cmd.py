"""``myocohort cluster``: list the profiles, render what one would start, check one."""

from __future__ import annotations

import typer

from jobs.options import EXIT_BAD_INPUT, EXIT_NO_CLUSTER, PROFILES_HELP, PlainHelpCommand, error

cluster_app = typer.Typer(
    help="Cluster profiles: list them, render what one would start, check one.\n\n"
    + PROFILES_HELP,
    short_help="Cluster profiles: list, render, check.",
    no_args_is_help=True,
)


@cluster_app.command("render", cls=PlainHelpCommand, short_help="Print what a profile would start (starts nothing).")
def cluster_render(
    profile: str = typer.Argument(..., metavar="PROFILE",
                                  help="Built-in name, YAML file or tcp://host:port."),
) -> None:
    """Print what PROFILE would start, starting nothing: the SLURM job script, the Kubernetes
    manifest, or the local cluster's arguments."""
    from cluster.profile import ProfileError, load_profile
    from cluster.registry import backend_for

    try:
        print(backend_for(load_profile(profile)).render(), end="")
    except ProfileError as e:
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None


@cluster_app.command("list", cls=PlainHelpCommand, short_help="List the built-in profiles and backends.")
def cluster_list() -> None:
    """List the built-in profiles and the backends."""
    from cluster.profile import BUILTIN_PROFILES, load_profile
    from cluster.registry import BACKENDS

    print("built-in profiles:")
    for name in BUILTIN_PROFILES:
        p = load_profile(name)
        print(f"  {name:<12} backend {p.backend:<11} TLS {'on' if p.tls_enabled else 'off'}")
    print("backends:")
    for name, cls in sorted(BACKENDS.items()):
        print(f"  {name:<12} {cls.description}")


@cluster_app.command("check", cls=PlainHelpCommand, short_help="Start a profile's cluster, list its workers, stop it.")
def cluster_check(
    profile: str = typer.Argument("local", metavar="PROFILE",
                                  help="Built-in name, YAML file or tcp://host:port."),
) -> None:
    """Start PROFILE's cluster, print its workers and their resources, and stop it."""
    from cluster.base import ClusterUnavailable
    from cluster.profile import ProfileError, load_profile
    from cluster.registry import backend_for

    try:
        backend = backend_for(load_profile(profile))
        with backend.client() as client:
            info = client.scheduler_info(n_workers=-1)
            print(f"scheduler: {info.get('address')}  dashboard: "
                  f"{backend.dashboard_link(client)}")
            for addr, w in sorted(info.get("workers", {}).items()):
                print(f"  {addr}  threads {w.get('nthreads')}  resources "
                      f"{w.get('resources') or {}}")
    except ProfileError as e:
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except ClusterUnavailable as e:
        error(str(e))
        raise typer.Exit(EXIT_NO_CLUSTER) from None


def register(app: typer.Typer) -> None:
    """Add the ``cluster`` sub-app to the typer app."""
    app.add_typer(cluster_app, name="cluster")
